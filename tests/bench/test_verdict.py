"""The scenario's judge (bench/verdict.py) and the views only benchmarks serve (bench/urls.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from bench.verdict import Facts, admissible, outcome
from catalog.models import Book

TOKEN_BUCKET = {"name": "p", "algorithm": "token_bucket", "limit": 20, "period": 600, "burst": 3}
SLIDING = {"name": "p", "algorithm": "sliding_window", "limit": 100, "period": 60, "burst": None}
FIXED = {"name": "p", "algorithm": "fixed_window", "limit": 100, "period": 60, "burst": None}


def test_admissible_is_the_burst_then_one_per_interval_for_a_token_bucket() -> None:
    assert admissible(TOKEN_BUCKET, 0) == 3
    assert admissible(TOKEN_BUCKET, 89.9) == 3 + 2  # one every 600 / 20 = 30 s
    assert admissible(TOKEN_BUCKET, 90) == 3 + 3


def test_admissible_counts_every_window_a_span_can_touch() -> None:
    assert admissible(SLIDING, 60) == 100
    assert admissible(SLIDING, 61) == 200
    assert admissible(FIXED, 60) == 200  # a span across a boundary touches two windows


def test_outcome_names_the_designed_answers() -> None:
    def r(status: int, problem: str = "") -> dict[str, Any]:
        return {"status": status, "problem": problem}

    assert [outcome(r(201)), outcome(r(0, "TimeoutError")), outcome(r(429)), outcome(r(409, "insufficient-stock"))] == [
        "2xx", "error", "429", "409 out of stock"
    ]  # fmt: skip
    assert outcome(r(503, "temporary-reduced-capacity")) == "503 breaker open"
    assert outcome(r(503, "dependency-unavailable")) == "503 dependency failed"
    assert outcome(r(503, "concurrency-limit")) == "503 bulkhead full"
    assert outcome(r(503, "database-unavailable")) == "5xx"
    assert outcome(r(409, "idempotency-key-reused")) == "other"


def facts(records: list[dict[str, Any]], peak: int | None = None) -> Facts:
    policies = {"ratelimits": {"search-ip": SLIDING | {"limit": 2}}, "breakers": {"search": {"open_seconds": 15}}}
    policies["bulkheads"] = {"search": {"max_in_flight": 4}}
    timeline = {"warmup": [0, 8], "attack": [28, 136], "fault_on": 50, "fault_off": 60, "slow_on": 118, "slow_off": 135}
    load = {"events": {"slow_peak": peak}, "wall_t0": 0.0}
    config = {"timeline": timeline, "policies": policies, "slow_ms": 1000}
    return Facts({"records": records, "config": config, "load": load, "samples": [], "server_timings": {}})


def admitted(sent: float, received: float) -> dict[str, Any]:
    return {"actor": "crawler", "status": 200, "problem": "", "quota": True, "sent": sent, "received": received}


def test_budget_is_violated_only_when_the_extra_requests_were_surely_decided_in_one_period() -> None:
    # Three admitted (limit 2 per 60 s), all answered within 60 s of the first send: certainly over.
    over = facts([admitted(0, 1), admitted(10, 11), admitted(20, 21)]).budget("crawler", "search-ip")
    assert over["violation"]
    assert over["max_in_any_period"] == 3
    # The third was sent inside the period but answered after it: queueing can explain it.
    queued = facts([admitted(0, 1), admitted(10, 11), admitted(20, 75)]).budget("crawler", "search-ip")
    assert not queued["violation"]
    assert (queued["max_in_any_period"], queued["max_by_send"]) == (2, 3)


def legit(endpoint: str, sent: float, ms: float, status: int = 200, problem: str = "") -> dict[str, Any]:
    return {"actor": "legit", "endpoint": endpoint, "status": status, "problem": problem, "quota": True,
            "sent": sent, "received": sent + ms / 1000}  # fmt: skip


def test_slowdown_judges_the_other_requests_against_baseline_and_slow_calls_against_the_slots() -> None:
    baseline = [legit("detail", 10 + n / 10, 20) for n in range(100)]
    crawling = [legit("search", 120, 1000), legit("search", 121, 210, 503, "concurrency-limit")]
    held = facts([*baseline, *crawling, *(legit("list", 119 + n / 10, 39) for n in range(100))], peak=4)
    assert held.slowdown_p99()[0]
    assert held.excused(crawling[1])
    assert not held.excused(baseline[0])
    slowed = facts([*baseline, *crawling, *(legit("order", 119 + n / 10, 41) for n in range(100))], peak=4)
    assert not slowed.slowdown_p99()[0]  # 41 ms against 20: over twice the baseline
    overfull = facts([*baseline, *(legit("list", 119 + n / 10, 20) for n in range(100))], peak=5)
    assert not overfull.slowdown_p99()[0]  # five slow searches at once, four slots


@pytest.mark.urls("bench.urls")
def test_bench_order_view_takes_one_copy(db: None, make_book: Callable[..., Book]) -> None:
    book = make_book(stock=3)
    assert Client().post(f"/bench/order/{book.pk}").status_code == 200
    book.refresh_from_db()
    assert book.stock == 2
    assert Client().get(f"/bench/order/{book.pk}").status_code == 405


@pytest.mark.urls("bench.urls")
def test_bench_ping_answers_at_once(db: None) -> None:
    response = Client().get("/api/bench/ping")
    assert (response.status_code, response.content) == (200, b"pong")
