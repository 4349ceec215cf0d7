"""Settings of the benchmark servers: the product's, without the resilience layer, or a minimal stack."""

from __future__ import annotations

import os

from bookstore.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
if os.environ.get("RESILIENCE_MIDDLEWARE", "true").lower() == "false":
    MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("resilience.")]  # noqa: F405
if os.environ.get("BENCH_MINIMAL_STACK", "false").lower() == "true":
    MIDDLEWARE = ["django.middleware.security.SecurityMiddleware", "django.middleware.common.CommonMiddleware"]
