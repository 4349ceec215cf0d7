"""Settings of the benchmark servers: the product's, without the resilience layer, or a minimal stack."""

from __future__ import annotations

import os

from bookstore.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
resilience_layer = ("resilience.http.middleware.ResilienceMiddleware", "resilience.http.stale.StaleCopyMiddleware")
if os.environ.get("RESILIENCE_MIDDLEWARE", "true").lower() == "false":
    MIDDLEWARE = [m for m in MIDDLEWARE if m not in resilience_layer]  # noqa: F405
if os.environ.get("BENCH_MINIMAL_STACK", "false").lower() == "true":
    MIDDLEWARE = ["django.middleware.security.SecurityMiddleware", "django.middleware.common.CommonMiddleware"]
