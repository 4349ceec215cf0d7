"""Fixtures that run real processes (gunicorn on the test database, a private Redis), and a fresh runtime."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from resilience.runtime import reset_runtime
from tests.live import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Return a started private redis-server on a free loopback port, closed at teardown."""
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def fresh_runtime(db: None) -> Iterator[None]:
    """A runtime of its own, so what an earlier test taught this process (refusals, subscriptions) is not known."""
    reset_runtime()
    yield
    reset_runtime()


@pytest.fixture
def other() -> Iterator[redis.Redis]:
    """A Redis connection of another process (an operator's shell, another instance)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()
