"""Fixtures for the operations tests: JSON log capture, gunicorn servers that may boot without a database, nginx."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bookstore.logging import JsonFormatter
from tests.ops.nginx import NginxServer


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Format every log record with JsonFormatter as it is emitted; return a reader of the parsed lines.

    Formatting at emit time matters: the request id lives in a context variable that is gone once
    the request is over.
    """
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def nginx() -> Iterator[Callable[..., NginxServer]]:
    """Return a factory that starts nginx with deploy/nginx's configuration (NginxServer arguments)."""
    servers: list[NginxServer] = []

    def start(**kwargs: Any) -> NginxServer:
        server = NginxServer(**kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in reversed(servers):
        server.stop()
