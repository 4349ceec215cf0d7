"""A PostgreSQL outage under real gunicorn: known down, it fails fast everywhere; back, it serves within a second.

The servers reach the test database through a TcpProxy (tests/live.py) that the test makes refuse
connections and cut the open ones, as when PostgreSQL's process dies; the shared server itself is
never touched. A server behind the proxy keeps its breakers under a Redis key prefix of its own
(LiveServer does that for any other DATABASE_URL), so the outage never reaches this process.
Every request is real HTTP on a fresh connection.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

from catalog.models import Book
from resilience.models import RateLimitPolicy
from tests.live import LiveServer, Reply, TcpProxy, database_url, request

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

WORKERS = 2
PROBLEM = "application/problem+json"
# Nearest-rank percentile goal for answers once the database is known down, and for /health/live.
P99_SECONDS = 0.05


def p99(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def database_unavailable(reply: Reply) -> bool:
    """Return True for the 503 problem a database out of reach answers, with Retry-After."""
    if reply.status != 503 or reply.header("Content-Type") != PROBLEM:
        return False
    retry_after = reply.header("Retry-After") or ""
    return json.loads(reply.body)["type"].endswith("/database-unavailable") and retry_after.isdigit()


def refused_by_breaker(reply: Reply) -> bool:
    return database_unavailable(reply) and json.loads(reply.body).get("breaker") == "database"


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    port = int(connections["default"].settings_dict["PORT"] or 5432)
    with TcpProxy(port) as proxy:
        yield proxy


class LivenessProbe:
    """GET /health/live every 20 ms on a thread of its own until stopped (at most 1500 probes)."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.replies: list[Reply] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.replies) < 1500:
            self.replies.append(request(self.server.port, "/health/live", timeout=10))
            self._stop.wait(0.02)

    def __enter__(self) -> LivenessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def start_behind(live_servers: Callable[..., LiveServer], proxy: TcpProxy) -> LiveServer:
    return live_servers(workers=WORKERS, env_overrides={"DATABASE_URL": proxy.url(database_url())})


def until_known_down(server: LiveServer, path: str) -> None:
    """Send requests until one is refused by the database breaker (at most 100, within 20 s)."""
    deadline = time.monotonic() + 20
    for _ in range(100):
        reply = request(server.port, path, timeout=10)
        assert reply.status == 503, (reply.status, reply.body[:200])
        if refused_by_breaker(reply):
            return
        assert time.monotonic() < deadline
    pytest.fail("the database breaker never refused a request")


def test_known_down_every_path_answers_503_fast_and_probes_keep_answering(
    live_servers: Callable[..., LiveServer], proxy: TcpProxy, make_book: Callable[..., Book]
) -> None:
    book = make_book()
    # Staff are exempt from this one: reading a token's owner is a query the middleware makes.
    RateLimitPolicy.objects.create(
        name="me-ip", match_type="prefix", pattern="/api/accounts/me", key="ip", limit=1000, exempt_staff=True
    )
    server = start_behind(live_servers, proxy)
    path = f"/api/books/{book.pk}"
    assert request(server.port, path).status == 200

    with LivenessProbe(server) as liveness:
        proxy.refuse()
        until_known_down(server, path)
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            replies = list(pool.map(lambda _: request(server.port, path, timeout=10), range(200)))
        # Where a middleware, the session or the token lookup meets the database, outside DRF.
        others = [
            request(server.port, "/admin/", headers={"Cookie": "sessionid=" + "s" * 32}),
            request(server.port, "/api/accounts/me", headers={"Authorization": "Token " + "a" * 40}),
        ]
        ready = request(server.port, "/health/ready")
        breakers = request(server.port, "/health/breakers")
        metrics = request(server.port, "/metrics")

    assert all(database_unavailable(reply) for reply in replies + others), [r.body[:120] for r in replies + others]
    assert {reply.header("Retry-After") for reply in replies + others} == {"1"}, "its time to half-open"
    # Once a second the half-open trial goes to the server, fails, and answers as a failure does.
    assert sum(refused_by_breaker(reply) for reply in replies) >= len(replies) - 5
    assert p99([reply.seconds for reply in replies]) < P99_SECONDS
    assert ready.status == 503
    assert json.loads(ready.body)["checks"]["database"].startswith("error: ")
    assert ready.seconds < 0.5, "readiness does not wait on a database known down"
    assert breakers.status == 200
    rows = {row["name"]: row for row in json.loads(breakers.body)["breakers"]}
    assert rows["database"]["state"] in ("open", "half-open")
    assert metrics.status == 200
    assert 'bookstore_breaker_rejections_total{breaker="database"}' in metrics.body.decode()
    assert all(reply.status == 200 for reply in liveness.replies)
    live_seconds = [reply.seconds for reply in liveness.replies]
    assert len(live_seconds) > 20
    assert p99(live_seconds) < P99_SECONDS, "liveness never waits on the database"
    assert max(live_seconds) < 0.25


def test_when_postgres_returns_the_first_success_comes_within_a_second(
    live_servers: Callable[..., LiveServer], proxy: TcpProxy, make_book: Callable[..., Book]
) -> None:
    book = make_book()
    server = start_behind(live_servers, proxy)
    path = f"/api/books/{book.pk}"
    assert request(server.port, path).status == 200
    proxy.refuse()
    until_known_down(server, path)
    # Let a few trials fail, so every worker's pool has been through the outage too.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert request(server.port, path).status == 503

    proxy.restore()
    back = time.monotonic()
    for _ in range(2000):
        reply = request(server.port, path)
        if reply.status == 200:
            break
        assert database_unavailable(reply)
        assert time.monotonic() - back < 5, "still refused 5 s after PostgreSQL came back"
    recovered = time.monotonic() - back

    assert reply.status == 200
    assert recovered < 1.5, f"first success {recovered:.2f} s after PostgreSQL came back"
    # And it stays back: the workers' pools do not hand out connections to the server that went away.
    later = [request(server.port, path) for _ in range(4 * WORKERS)]
    assert [reply.status for reply in later] == [200] * len(later)
