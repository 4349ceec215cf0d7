"""What the benchmarks set up and how pg_outage reads its records, without running a load."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import hotpath, pg_outage
from resilience.models import CircuitBreakerPolicy, ConcurrencyPolicy, RateLimitPolicy


@pytest.mark.default_policies
def test_hotpath_policies_are_valid_and_the_database_breaker_stays_on(db: None) -> None:
    assert CircuitBreakerPolicy.objects.filter(enabled=True).count() > 1  # the product's: search, database
    assert ConcurrencyPolicy.objects.filter(enabled=True, name="search").exists()
    hotpath.prepare(hotpath.PATH, hotpath.LIMITS, hotpath.BREAKER, hotpath.BULKHEAD)
    limits = set(RateLimitPolicy.objects.filter(enabled=True).values_list("name", flat=True))
    breakers = set(CircuitBreakerPolicy.objects.filter(enabled=True).values_list("name", flat=True))
    bulkheads = ConcurrencyPolicy.objects.filter(enabled=True).values_list("name", "pattern", "max_in_flight")
    assert limits == {"bench-ip", "bench-global", "bench-app"}
    assert breakers == {"bench-breaker", "database"}
    assert list(bulkheads) == [("bench-bulkhead", hotpath.PATH, 10_000)]


API = "/api/books/1"
REFUSED = json.dumps({"status": 503, "breaker": "database"})


def rec(path: str, start: float, ms: float, status: int, detail: str = "", retry_after: str = "") -> list[Any]:
    return [path, start, ms / 1000, status, detail, retry_after]


def test_pg_outage_times_the_breaker_and_the_return_from_the_records() -> None:
    records = [
        rec(API, 0.0, 10, 200),
        rec(API, 10.0, 2000, 503, REFUSED, "1"),  # the first refusal, answered at 12 s
        rec(API, 11.0, 40, 503, "not json", "1"),  # sent before the breaker was known open
        rec(API, 12.5, 30, 503, REFUSED, "1"),
        rec(API, 13.0, 5, 503, REFUSED),  # no Retry-After
        rec(API, 20.0, 5, 0, "connect: ConnectionRefusedError"),
        rec(API, 20.2, 15, 200),
        rec(pg_outage.LIVE, 15.0, 3, 200),
        rec("/metrics", 15.0, 9, 500),
    ]
    f = pg_outage.analyse(records, API, t_out=10.0, t_back=20.0)
    assert f["known_down_after_s"] == 2.0
    assert f["api_once_known_down"]["count"] == 2
    assert f["api_statuses_during_outage"] == {"503": 4}
    assert f["api_503_without_problem_or_retry_after"] == 1
    assert f["api_other_statuses"] == 1  # the refused connection
    assert f["first_success_after_return_s"] == 0.215
    assert f["server_errors"] == {
        "/api/books/1 503": 4, "/api/books/1 connect: ConnectionRefusedError": 1, "/metrics 500": 1
    }  # fmt: skip
    failed = {c["name"] for c in pg_outage.checks(f) if not c["ok"]}
    assert failed == {
        "API answers only 200 or 503", "every 503 a problem+json with Retry-After",
        "/health/breakers and /metrics always 200",
    }  # fmt: skip
