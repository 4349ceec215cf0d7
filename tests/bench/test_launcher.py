"""The gunicorn launcher the live tests and the benchmarks share: threads, extra flags, the lean access log."""

from __future__ import annotations

import http.client
import time

import pytest

from tests.live import HOST, LiveServer

pytestmark = pytest.mark.live
LEAN_LOG = ("--logger-class", "bench.accesslog.ServiceTimeLogger")


def two_requests_on_one_connection(server: LiveServer) -> list[str | None]:
    """Return each answer's Connection header: gthread workers keep the connection, sync workers close it."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    seen = []
    try:
        for rid in ("lean-1", "lean-2"):
            conn.request("GET", "/health/live", headers={"X-Request-ID": rid})
            response = conn.getresponse()
            response.read()
            seen.append(response.getheader("Connection"))
    finally:
        conn.close()
    return seen


def test_gthread_workers_keep_connections_alive_and_sync_workers_close_them(transactional_db: None) -> None:
    with LiveServer(workers=1, threads=2, ready_path="/health/live") as server:
        assert two_requests_on_one_connection(server) == ["keep-alive", "keep-alive"]
    sync = {"GUNICORN_WORKER_CLASS": "sync"}
    with LiveServer(workers=1, threads=1, ready_path="/health/live", env_overrides=sync) as server:
        assert two_requests_on_one_connection(server)[0] == "close"


def test_extra_flags_reach_gunicorn_and_the_lean_log_keeps_what_served_pids_reads(transactional_db: None) -> None:
    with LiveServer(workers=1, threads=2, ready_path="/health/live", args=LEAN_LOG) as server:
        two_requests_on_one_connection(server)
        # gunicorn writes an access line after the response is sent: wait for the second one.
        deadline = time.monotonic() + 5
        while not {"lean-1", "lean-2"} <= (lines := {fields[-1]: fields for fields in server.access_lines()}).keys():
            assert time.monotonic() < deadline, "the access log never got both lines"
            time.sleep(0.01)
        (pid,) = server.worker_pids()
        assert lines["lean-1"][:2] == [f"<{pid}>", "200"]
        assert int(lines["lean-2"][2]) > 0  # service time, µs
        assert server.served_pids() == {pid}
