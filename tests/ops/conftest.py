"""Fixtures for the operations tests: JSON log capture and gunicorn servers that may boot without a database."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bookstore.logging import JsonFormatter
from tests.live import LiveServer, request, stop_all


class ProbeLiveServer(LiveServer):
    """A LiveServer that counts as up once /health/live answers, so it boots with a dead database too."""

    def _wait_until_serving(self) -> None:
        import time

        assert self.proc is not None
        deadline = time.monotonic() + self.boot_timeout
        while True:
            if self.proc.poll() is not None:
                self._fail(f"exited with status {self.proc.returncode}")
            try:
                if request(self.port, "/health/live", timeout=2).status == 200:  # type: ignore[arg-type]
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._fail(f"did not answer within {self.boot_timeout:.0f} s")
            time.sleep(0.05)
        while len(self.served_pids() & set(self.worker_pids())) < self.workers:
            if self.proc.poll() is not None:
                self._fail(f"exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"did not have {self.workers} serving workers within {self.boot_timeout:.0f} s")
            self._burst("/health/live", self.workers * 2)


@pytest.fixture
def live_servers(transactional_db: None) -> Iterator[Callable[..., LiveServer]]:
    """Return a factory that starts gunicorn (LiveServer arguments, probe=True to boot on /health/live)."""
    servers: list[LiveServer] = []

    def start(*, probe: bool = False, **kwargs: Any) -> LiveServer:
        server = (ProbeLiveServer if probe else LiveServer)(**kwargs)
        servers.append(server)
        return server.start()

    yield start
    stop_all(reversed(servers))


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
