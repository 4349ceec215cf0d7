"""Fixtures that run real processes: gunicorn on the test database, and a private Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.live import LiveServer, RedisServer, stop_all


@pytest.fixture
def live_servers(transactional_db: None) -> Iterator[Callable[..., LiveServer]]:
    """Return a factory that starts gunicorn (LiveServer arguments); every server stops at teardown.

    It needs transactional_db: the workers are other processes, so they see only committed data.
    """
    servers: list[LiveServer] = []

    def start(**kwargs: object) -> LiveServer:
        server = LiveServer(**kwargs)  # type: ignore[arg-type]
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
