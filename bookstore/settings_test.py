"""Settings for the test suite: real PostgreSQL and Redis on loopback, fast hashing."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bookstore")
# Every test run gets its own Redis key space, inherited by the servers the tests start.
os.environ.setdefault("RESILIENCE_KEY_PREFIX", f"test-{uuid.uuid4().hex[:12]}:")
os.environ.setdefault("REDIS_URL", os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))

from bookstore.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}  # noqa: F405
WHITENOISE_AUTOREFRESH = True
