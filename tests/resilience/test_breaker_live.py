"""Circuit breakers under real gunicorn: one breaker across workers, exact half-open trials, shell commands.

Every request is real HTTP on loopback, on a fresh connection (Connection: close), so consecutive
requests land on different workers. Faults are switched through the staff API of the running server
and read back from it: the fault point's call counter is how these tests see whether a call reached
the protected code.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from django.conf import settings

from accounts.models import User
from accounts.services import token_create
from catalog.models import Book
from resilience.engine.breaker import State
from resilience.models import CircuitBreakerPolicy
from resilience.runtime import get_runtime
from resilience.runtime.policies import breaker_config
from tests.conftest import make_breaker
from tests.live import ROOT, LiveServer, Reply, request

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

REDUCED_CAPACITY = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
DEPENDENCY_UNAVAILABLE = "dependency-unavailable"
SEARCH = "/api/books/search?q=tolkien"
MISSING = "/api/books/999999"


def search_breaker(**fields: Any) -> CircuitBreakerPolicy:
    """Create the policy of the `with breaker("search")` guard around book search."""
    return make_breaker(name="search", match_type="code", pattern="search", failure_statuses="500-599", **fields)


def start(live_servers: Callable[..., LiveServer]) -> LiveServer:
    # Faults live in the cache: a key space of this run's own keeps other runs' drills out.
    return live_servers(
        workers=4,
        env_overrides={"FAULT_INJECTION": "true", "CACHE_KEY_PREFIX": f"{settings.RESILIENCE_KEY_PREFIX}cache"},
    )


class Ops:
    """A staff member driving the fault switch of one running server."""

    def __init__(self, server: LiveServer, staff: User) -> None:
        self.server = server
        self.auth = {"Authorization": f"Token {token_create(user=staff).token}"}

    def fault(self, mode: str | None, **extra: int) -> None:
        url = f"{self.server.url}/api/ops/faults/search"
        if mode is None:
            reply = requests.delete(url, headers=self.auth, timeout=10)
            assert reply.status_code == 204, reply.text
            return
        reply = requests.put(url, json={"mode": mode, **extra}, headers=self.auth, timeout=10)
        assert reply.status_code == 200, reply.text

    def calls(self) -> int:
        """Return how many calls reached the search fault point, on every worker together."""
        reply = request(self.server.port, "/api/ops/faults/search", headers=self.auth)
        assert reply.status == 200
        return json.loads(reply.body)["calls"]

    def health(self, name: str) -> dict[str, Any]:
        reply = request(self.server.port, "/health/breakers")
        assert reply.status == 200
        return next(row for row in json.loads(reply.body)["breakers"] if row["name"] == name)


def fire(
    port: int, path: str, count: int, concurrency: int, *, probe: str = "-", together: bool = False
) -> list[Reply]:
    """Send `count` requests, `concurrency` at a time; with together, all of them released at once."""
    gate = threading.Barrier(count) if together else None

    def one(_: int) -> Reply:
        if gate is not None:
            gate.wait(timeout=20)
        return request(port, path, headers={"X-Probe": probe}, timeout=20)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(count)))


def kind(reply: Reply) -> str:
    """Return "ok", or the problem type's last part ("temporary-reduced-capacity", ...)."""
    if reply.status < 400:
        return "ok"
    assert reply.header("Content-Type") == "application/problem+json", (reply.status, reply.body[:200])
    return json.loads(reply.body)["type"].rsplit("#", 1)[-1].rsplit("/", 1)[-1]


def kinds(replies: list[Reply]) -> Counter[str]:
    return Counter(kind(r) for r in replies)


def trip_long_ago(policy: CircuitBreakerPolicy) -> None:
    """Trip the shared breaker an hour ago, so its open period is over and the next call finds it half-open."""
    cfg = breaker_config(policy)
    store = get_runtime().breaker_shared
    then = time.time() - 3600
    store.reset(cfg.name, then)
    for _ in range(cfg.failure_threshold):
        permit, _ = store.allow(cfg, then)
        store.record(cfg, permit.generation, False, then)
    assert store.snapshot(cfg).state is State.HALF_OPEN


def manage(server: LiveServer, *args: str) -> str:
    """Run `manage.py ARGS` in a process of its own, configured as the server's workers are."""
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "manage.py", *args],
        cwd=ROOT,
        env=server.environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(autouse=True)
def _search_breaker_closed(transactional_db: None) -> None:
    """Start with the shared "search" breaker closed: its state outlives the tests that trip it."""
    get_runtime().breaker_shared.reset("search")


def test_open_breaker_keeps_every_call_away_from_failing_search(
    live_servers: Callable[..., LiveServer], staff: User
) -> None:
    threshold, concurrency = 5, 16
    search_breaker(failure_threshold=threshold, open_seconds=30)
    server = start(live_servers)
    ops = Ops(server, staff)
    ops.fault("error")
    before = ops.calls()

    replies = fire(server.port, SEARCH, 160, concurrency)
    reached = ops.calls() - before

    # Every call that got through failed; the ones after the trip never got through.
    assert threshold <= reached <= threshold + concurrency
    assert kinds(replies) == {DEPENDENCY_UNAVAILABLE: reached, "temporary-reduced-capacity": 160 - reached}
    assert ops.health("search")["state"] == "open"

    later = fire(server.port, SEARCH, 64, concurrency)

    assert kinds(later) == {"temporary-reduced-capacity": 64}
    assert all(1 <= int(r.header("Retry-After") or 0) <= 30 for r in later)
    assert all(r.header("X-Circuit-Breaker-State") == "open" for r in later)
    assert ops.calls() - before == reached  # zero calls reached search while open


def evalsha_calls() -> int:
    """Return how many scripts Redis has run: every breaker question is one."""
    stats = get_runtime().breaker_shared.client.info("commandstats")  # type: ignore[attr-defined]  # the Redis store here
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_workers_that_know_the_breaker_is_open_refuse_without_asking_redis(
    live_servers: Callable[..., LiveServer], staff: User
) -> None:
    search_breaker(failure_threshold=1, open_seconds=60)
    server = start(live_servers)
    ops = Ops(server, staff)
    ops.fault("error")
    assert kind(request(server.port, SEARCH)) == DEPENDENCY_UNAVAILABLE

    # A worker's first refusals ask Redis (the first also subscribes to changes); once it knows
    # the breaker is open, it refuses for the rest of the open period on its own.
    deadline = time.monotonic() + 20  # well inside the open period
    while True:
        before = evalsha_calls()
        replies = fire(server.port, SEARCH, 40, 8, probe="memory")
        asked = evalsha_calls() - before
        assert kinds(replies) == {"temporary-reduced-capacity": 40}
        if asked == 0:
            break
        assert time.monotonic() < deadline, f"{asked} of 40 refusals still asked Redis"
    assert len(server.served_pids("memory")) >= 2
    assert all(1 <= int(r.header("Retry-After") or 0) <= 60 for r in replies)


def test_half_open_admits_exactly_k_trials_across_workers(live_servers: Callable[..., LiveServer], staff: User) -> None:
    k, open_seconds = 3, 30
    policy = search_breaker(failure_threshold=1, open_seconds=open_seconds, half_open_max_calls=k)
    server = start(live_servers)
    ops = Ops(server, staff)

    # Healthy but slow: the K trials are still running while the other 61 requests arrive.
    trip_long_ago(policy)
    ops.fault("slow", delay_ms=1500)
    before = ops.calls()
    replies = fire(server.port, SEARCH, 64, 64, together=True)

    assert ops.calls() - before == k
    assert kinds(replies) == {"ok": k, "temporary-reduced-capacity": 64 - k}
    assert ops.health("search")["state"] == "closed"  # K successes closed it

    # Failing: the first failed trial re-opens it for a fresh open period.
    trip_long_ago(policy)
    ops.fault("error")
    before = ops.calls()
    replies = fire(server.port, SEARCH, 64, 64, together=True)
    reached = ops.calls() - before

    assert 1 <= reached <= k
    assert kinds(replies) == {DEPENDENCY_UNAVAILABLE: reached, "temporary-reduced-capacity": 64 - reached}
    row = ops.health("search")
    assert row["state"] == "open"
    assert row["seconds_to_half_open"] >= open_seconds - 3
    refused = request(server.port, SEARCH)
    assert kind(refused) == "temporary-reduced-capacity"
    assert int(refused.header("Retry-After") or 0) >= open_seconds - 3
    assert ops.calls() - before == reached


def test_commands_from_another_process_apply_to_every_worker_at_once(
    live_servers: Callable[..., LiveServer], staff: User, make_book: Callable[..., Book]
) -> None:
    book = make_book()
    search_breaker(failure_threshold=1, open_seconds=30)
    make_breaker(
        name="detail",
        match_type="regex",
        pattern=rf"^/api/books/({book.pk}|999999)$",
        failure_statuses="404",
        failure_threshold=1,
        open_seconds=30,
    )
    server = start(live_servers)
    ops = Ops(server, staff)
    detail = f"/api/books/{book.pk}"

    # Trip search, then heal it: it stays open for 30 s on every worker ...
    ops.fault("error")
    assert kind(request(server.port, SEARCH)) == DEPENDENCY_UNAVAILABLE
    ops.fault(None)
    assert kinds(fire(server.port, SEARCH, 16, 8)) == {"temporary-reduced-capacity": 16}

    # ... until an operator resets it from a shell.
    manage(server, "breakers", "reset", "search")
    after = fire(server.port, SEARCH, 16, 8, probe="reset")
    assert kinds(after) == {"ok": 16}
    assert len(server.served_pids("reset")) >= 2
    assert ops.health("search")["state"] == "closed"

    manage(server, "breakers", "open", "detail")
    opened = fire(server.port, detail, 16, 8, probe="open")
    assert kinds(opened) == {"temporary-reduced-capacity": 16}
    assert {r.header("X-Circuit-Breaker-State") for r in opened} == {"open"}

    manage(server, "breakers", "close", "detail")
    failing = fire(server.port, MISSING, 16, 8, probe="close")
    assert [r.status for r in failing] == [404] * 16  # threshold 1, yet held closed
    assert {r.header("X-Circuit-Breaker-State") for r in failing} == {"closed"}

    manage(server, "breakers", "release", "detail")
    released = fire(server.port, detail, 16, 8, probe="release")
    assert kinds(released) == {"ok": 16}
    assert {r.header("X-Circuit-Breaker-State") for r in released} == {"closed"}
    for probe in ("open", "close", "release"):
        assert len(server.served_pids(probe)) >= 2, probe

    status = json.loads(manage(server, "breakers", "status", "--json"))
    assert {row["name"]: row["state"] for row in status} == {"detail": "closed", "search": "closed"}
