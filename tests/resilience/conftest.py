"""Fixtures that run real processes (gunicorn on the test database, a private Redis), and a fresh runtime."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings

from resilience.runtime import reset_runtime
from tests.live import LiveServer, RedisServer, stop_all


@pytest.fixture
def live_servers(transactional_db: None) -> Iterator[Callable[..., LiveServer]]:
    """Return a factory that starts gunicorn (LiveServer arguments); every server stops at teardown.

    It needs transactional_db: the workers are other processes, so they see only committed data.
    """
    servers: list[LiveServer] = []

    def start(**kwargs: Any) -> LiveServer:
        server = LiveServer(**kwargs)
        servers.append(server)
        return server.start()

    yield start
    stop_all(reversed(servers))


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
