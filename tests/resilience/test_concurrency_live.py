"""Concurrency policies under real gunicorn: one limit across two instances, and slots a killed worker held.

Search is made slow with the fault injection of the running servers (resilience/ops/faults.py); the
fault point records how many calls were inside it at once, so the limit is checked where the slow
work happens, not inferred from the replies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
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
from resilience.http.bulkheads import slots_base
from resilience.models import ConcurrencyPolicy
from resilience.runtime import get_runtime
from resilience.runtime.policies import compile_concurrency
from tests.conftest import make_concurrency
from tests.live import LiveServer, Reply, request

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

SEARCH = "/api/books/search?q=tolkien"


def make_policy(**fields: Any) -> ConcurrencyPolicy:
    """Create the slots of the book search (its `search` tag), shared by the whole fleet."""
    return make_concurrency(name="search-slots", match_type="tag", pattern="search", key="global", **fields)


def in_flight(policy: ConcurrencyPolicy) -> int:
    """Return the slots held in Redis now (expired leases left out), as every worker counts them."""
    store = get_runtime().concurrency_shared
    assert store is not None
    return store.status(slots_base(compile_concurrency(policy), "all"))[0]


def start(live_servers: Callable[..., LiveServer], workers: int = 4) -> LiveServer:
    # Faults live in the cache: a key space of this run's own, shared by every server of the test.
    return live_servers(
        workers=workers,
        env_overrides={"FAULT_INJECTION": "true", "CACHE_KEY_PREFIX": f"{settings.RESILIENCE_KEY_PREFIX}cache"},
    )


class Fault:
    """A staff member driving the search fault through a running server."""

    def __init__(self, server: LiveServer, staff: User) -> None:
        self.url = f"{server.url}/api/ops/faults/search"
        self.auth = {"Authorization": f"Token {token_create(user=staff).token}"}

    def slow(self, delay_ms: int) -> None:
        body = {"mode": "slow", "delay_ms": delay_ms, "ttl": 120}
        reply = requests.put(self.url, json=body, headers=self.auth, timeout=30)
        assert reply.status_code == 200, reply.text

    def clear(self) -> None:
        assert requests.delete(self.url, headers=self.auth, timeout=30).status_code == 204

    def state(self) -> dict[str, Any]:
        reply = requests.get(self.url, headers=self.auth, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()  # type: ignore[no-any-return]


def kind(reply: Reply) -> str:
    if reply.status < 400:
        return "ok"
    assert reply.header("Content-Type") == "application/problem+json", (reply.status, reply.body[:200])
    return str(json.loads(reply.body)["type"]).rsplit("/", 1)[-1]


def test_sixty_four_slow_searches_over_two_instances_never_run_more_than_eight_at_once(
    live_servers: Callable[..., LiveServer], staff: User
) -> None:
    policy = make_policy(max_in_flight=8, max_wait_ms=0)
    servers = [start(live_servers), start(live_servers)]  # 2 x 4 workers x 4 threads: 32 at once
    fault = Fault(servers[0], staff)
    fault.slow(1000)
    # A killed worker's calls never leave the fault point: count only what this test adds.
    stranded = fault.state()["in_progress"]
    gate = threading.Barrier(64)

    def one(i: int) -> Reply:
        gate.wait(timeout=30)
        return request(servers[i % 2].port, SEARCH, timeout=60)

    with ThreadPoolExecutor(max_workers=64) as pool:
        replies = list(pool.map(one, range(64)))

    state = fault.state()
    kinds = Counter(kind(r) for r in replies)
    print(f"peak in the slow search: {state['peak']}; replies: {dict(kinds)}")
    assert state["peak"] == 8  # the limit was reached, and never passed, across both instances
    assert set(kinds) == {"ok", "concurrency-limit"}
    assert kinds["ok"] >= 8
    refused = [r for r in replies if r.status == 503]
    assert all(r.header("Retry-After") == "1" for r in refused)
    assert {r.port for r in refused} == {servers[0].port, servers[1].port}  # both instances refused
    assert state["in_progress"] == stranded
    assert in_flight(policy) == 0  # every slot was given back
    # What the fleet's metrics say (each instance's workers summed by its /metrics).
    refused_sample = 'bookstore_concurrency_decisions_total{outcome="refused",policy="search-slots"}'
    refusals = sum(metric(s, refused_sample) for s in servers)
    assert refusals == len(refused)
    assert all(metric(s, 'bookstore_concurrency_in_flight{policy="search-slots"}') == 0 for s in servers)


def metric(server: LiveServer, sample: str) -> float:
    """Return one sample of a server's /metrics (0 when absent)."""
    reply = request(server.port, "/metrics")
    assert reply.status == 200
    for line in reply.body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def test_searches_that_may_wait_all_get_in_eight_at_a_time_across_instances(
    live_servers: Callable[..., LiveServer], staff: User
) -> None:
    policy = make_policy(max_in_flight=8, max_wait_ms=8000)
    servers = [start(live_servers), start(live_servers)]
    fault = Fault(servers[0], staff)
    fault.slow(300)
    stranded = fault.state()["in_progress"]
    gate = threading.Barrier(24)

    def one(i: int) -> Reply:
        gate.wait(timeout=30)
        return request(servers[i % 2].port, SEARCH, timeout=60)

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=24) as pool:
        replies = list(pool.map(one, range(24)))
    took = time.monotonic() - began

    state = fault.state()
    print(
        f"24 searches that may wait: peak {state['peak']}, statuses {Counter(r.status for r in replies)}, {took:.2f} s"
    )
    assert [r.status for r in replies] == [200] * 24  # each waited its turn instead of being refused
    assert state["peak"] == 8
    assert took >= 3 * 0.3  # three rounds of eight at least: they did wait
    assert state["in_progress"] == stranded
    assert in_flight(policy) == 0


def test_slots_a_killed_worker_held_come_back_within_the_lease(
    live_servers: Callable[..., LiveServer], staff: User
) -> None:
    lease = 4
    policy = make_policy(max_in_flight=4, max_wait_ms=0, lease_seconds=lease)
    server = start(live_servers, workers=2)
    fault = Fault(server, staff)
    fault.slow(20_000)
    stuck = [threading.Thread(target=_quietly, args=(server.port,), daemon=True) for _ in range(4)]
    for thread in stuck:
        thread.start()
    deadline = time.monotonic() + 15
    while in_flight(policy) < 4:
        assert time.monotonic() < deadline, "the four slow searches never held their slots"
        time.sleep(0.02)
    taken_at = time.monotonic()

    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    assert in_flight(policy) == 4  # the slots outlive the workers that held them
    while in_flight(policy) > 0:
        assert time.monotonic() - taken_at < lease + 2, "the dead workers' slots never came back"
        time.sleep(0.01)
    back_at = time.monotonic()
    print(f"capacity back {back_at - killed_at:.2f} s after kill -9 ({back_at - taken_at:.2f} s after taking them)")
    assert back_at - taken_at <= lease + 0.5

    # The respawned workers (asked only now: a busy worker's queue would hold the request) serve
    # the full limit again.
    fault.clear()
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda _: request(server.port, SEARCH, timeout=30), range(4)))
    assert [r.status for r in replies] == [200] * 4
    assert in_flight(policy) == 0


def _quietly(port: int) -> None:
    with contextlib.suppress(OSError):  # its worker is killed under it
        request(port, SEARCH, timeout=30)
