"""Slow-header clients (open a connection, send part of a header slowly, never finish) and probe timing.

tests/ops/test_nginx.py asserts that they do not delay /health/live through nginx. To see what
they do to gunicorn without nginx in front, for comparison (each server on a free loopback port):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookstore_NAME \\
      .venv/bin/python -m tests.ops.slow_headers [direct-sync|direct-gthread|nginx]

"direct-sync" is gunicorn's sync worker, the old default; "direct-gthread" the default now.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.live import HOST, request

PROBE_PATH = "/health/live"
# How often each slow client sends one more byte of its never-ending header (s).
TRICKLE_SECONDS = 0.25


@contextmanager
def slow_header_clients(port: int, count: int, *, seconds: float = 60.0) -> Iterator[list[socket.socket]]:
    """Hold count connections that send a header a byte at a time and never end it; yield their sockets.

    A background thread adds one byte to every header each TRICKLE_SECONDS for at most seconds,
    until the block exits; a socket the server closed is left alone.
    """
    sockets = [socket.create_connection((HOST, port), timeout=5) for _ in range(count)]
    stop = threading.Event()
    for sock in sockets:
        sock.sendall(f"GET {PROBE_PATH} HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())

    def trickle() -> None:
        deadline = time.monotonic() + seconds
        while not stop.wait(TRICKLE_SECONDS) and time.monotonic() < deadline:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(b"a")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield sockets
    finally:
        stop.set()
        thread.join()
        for sock in sockets:
            sock.close()


def still_open(sock: socket.socket) -> bool:
    """Return True if the server has not closed the connection (nothing to read, no EOF)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def probe_seconds(port: int, count: int, *, timeout: float = 15.0) -> list[float]:
    """Time count probes of PROBE_PATH, one after another, each on a new connection (timeout: inf)."""
    seconds = []
    for _ in range(count):
        try:
            reply = request(port, PROBE_PATH, timeout=timeout)
            seconds.append(reply.seconds if reply.status == 200 else float("inf"))
        except OSError:
            seconds.append(float("inf"))
    return seconds


def main(target: str) -> None:
    """Print probe times with and without 50 slow-header clients in front of one kind of server."""
    import django

    django.setup()
    from tests.live import LiveServer
    from tests.ops.nginx import NginxServer

    overrides = {"GUNICORN_WORKER_CLASS": "sync", "GUNICORN_THREADS": "1"} if target == "direct-sync" else {}
    with LiveServer(workers=2, env_overrides=overrides, ready_path=PROBE_PATH) as app:
        proxy = NginxServer(upstream=f"{HOST}:{app.port}").start() if target == "nginx" else None
        try:
            port = proxy.port if proxy is not None else app.port
            assert port is not None
            quiet = probe_seconds(port, 20)
            with slow_header_clients(port, 50):
                loaded = probe_seconds(port, 20)
        finally:
            if proxy is not None:
                proxy.stop()
    for name, values in (("no slow clients", quiet), ("50 slow-header clients", loaded)):
        ordered = sorted(values)
        print(
            f"{target}: {name}: median {ordered[len(ordered) // 2] * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms, {sum(v == float('inf') for v in values)} of {len(values)} failed"
        )


if __name__ == "__main__":
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookstore.settings_test")
    main(sys.argv[1] if len(sys.argv) > 1 else "nginx")
