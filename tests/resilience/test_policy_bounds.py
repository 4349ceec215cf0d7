"""Numbers staff type never make a request fail: bounds in the form, the database, the engine and the Lua."""

from __future__ import annotations

import importlib
import itertools
import logging
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest
import redis
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from accounts.models import User
from resilience.engine.breaker import (
    MAX_COUNT_WINDOW,
    MAX_FAILURE_THRESHOLD,
    MAX_HALF_OPEN_CALLS,
    MAX_MINIMUM_CALLS,
    MAX_OPEN_SECONDS,
    MAX_SLOW_CALL_MS,
    MAX_STALE_MAX_AGE,
    MAX_TIME_WINDOW,
    BreakerConfig,
    State,
)
from resilience.engine.limiter import (
    MAX_BURST,
    MAX_CAPACITY_SECONDS,
    MAX_LIMIT,
    MAX_PERIOD,
    MAX_PRIORITY,
    MIN_PRIORITY,
    SLIDING_LOG_MAX,
    Algorithm,
)
from resilience.models import CircuitBreakerPolicy, RateLimitOverride, RateLimitPolicy, parse_status_set
from resilience.ops import metrics
from resilience.runtime import Runtime, get_runtime, key_prefix
from resilience.runtime.policies import policy_problem
from resilience.stores.redis_breaker import RedisBreakerStore, config_args
from resilience.stores.redis_limiter import RedisLimiterStore

RL_CHANGELIST = "/admin/resilience/ratelimitpolicy/"
CB_CHANGELIST = "/admin/resilience/circuitbreakerpolicy/"
DASHBOARD_DATA = "/admin/resilience/dashboard/data.json"
INT32_MAX = 2**31 - 1
MISSING = "/api/books/999999"  # a 404

_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@pytest.fixture
def admin_client(db: None) -> Client:
    superuser = User.objects.create_superuser(
        username="bounds-root", email="bounds-root@example.com", password="correct-horse-battery"
    )
    client = Client()
    client.force_login(superuser)
    return client


def ratelimit_form(overrides: list[dict[str, str]] | None = None, **fields: str | None) -> dict[str, str]:
    """Return the POST body of the rate-limit policy add form (inline overrides included)."""
    data = {
        "name": unique("form-rl"),
        "enabled": "on",
        "mode": "enforce",
        "priority": "100",
        "methods": "",
        "match_type": "prefix",
        "pattern": "/api/books",
        "key": "ip",
        "header_name": "",
        "rate": "",
        "algorithm": "token_bucket",
        "limit": "10",
        "period": "60",
        "burst": "",
        "on_store_failure": "allow",
    }
    data.update({k: v for k, v in fields.items() if v is not None})
    for name in [k for k, v in fields.items() if v is None]:
        data.pop(name, None)  # an unchecked checkbox is absent
    overrides = overrides or []
    data.update(
        {
            "overrides-TOTAL_FORMS": str(len(overrides)),
            "overrides-INITIAL_FORMS": "0",
            "overrides-MIN_NUM_FORMS": "0",
            "overrides-MAX_NUM_FORMS": "1000",
        }
    )
    for i, override in enumerate(overrides):
        for name, value in override.items():
            data[f"overrides-{i}-{name}"] = value
    return data


def breaker_form(**fields: str | None) -> dict[str, str]:
    """Return the POST body of the breaker policy add form."""
    data = {
        "name": unique("form-cb"),
        "enabled": "on",
        "methods": "",
        "match_type": "prefix",
        "pattern": "/api/books",
        "failure_statuses": "500-599",
        "slow_call_ms": "",
        "failure_threshold": "5",
        "failure_rate": "0",
        "window_kind": "count",
        "window_size": "20",
        "minimum_calls": "10",
        "open_seconds": "30",
        "half_open_max_calls": "1",
        "fallback": "error",
        "stale_max_age": "300",
    }
    data.update({k: v for k, v in fields.items() if v is not None})
    for name in [k for k, v in fields.items() if v is None]:
        data.pop(name, None)
    return data


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, "an invalid form is shown again, not a redirect or a 500"
    errors = dict(response.context["adminform"].form.errors)
    for formset in response.context.get("inline_admin_formsets", []):
        for i, form_errors_ in enumerate(formset.formset.errors):
            errors.update({f"overrides-{i}-{k}": v for k, v in form_errors_.items()})
    return errors


def policy_errors(name: str, stage: str) -> float:
    return metrics.policy_errors.labels(name, stage)._value.get()


# --- the admin form shows and enforces every bound ----------------------------------------------------

# field -> (min, max) as the form's number input must carry them
RATELIMIT_BOUNDS = {
    "priority": (MIN_PRIORITY, MAX_PRIORITY),
    "limit": (0, MAX_LIMIT),
    "period": (1, MAX_PERIOD),
    "burst": (1, MAX_BURST),
}
BREAKER_BOUNDS = {
    "slow_call_ms": (1, MAX_SLOW_CALL_MS),
    "failure_threshold": (0, MAX_FAILURE_THRESHOLD),
    "failure_rate": (0, 100),
    "window_size": (1, MAX_COUNT_WINDOW),
    "minimum_calls": (0, MAX_MINIMUM_CALLS),
    "open_seconds": (1, MAX_OPEN_SECONDS),
    "half_open_max_calls": (1, MAX_HALF_OPEN_CALLS),
    "stale_max_age": (1, MAX_STALE_MAX_AGE),
}


def number_input(html: str, name: str) -> dict[str, str]:
    """Return the attributes of the <input name=...> of a page."""
    match = re.search(rf'<input[^>]*\bname="{re.escape(name)}"[^>]*>', html)
    assert match is not None, f"no input named {name}"
    return dict(re.findall(r'(\w+)="([^"]*)"', match.group(0)))


@pytest.mark.parametrize(
    ("url", "bounds"), [(RL_CHANGELIST + "add/", RATELIMIT_BOUNDS), (CB_CHANGELIST + "add/", BREAKER_BOUNDS)]
)
def test_admin_form_shows_every_bound_on_its_input_and_in_its_help(
    admin_client: Client, url: str, bounds: dict[str, tuple[int, int]]
) -> None:
    html = admin_client.get(url).content.decode()

    for name, (low, high) in bounds.items():
        attrs = number_input(html, name)
        assert (float(attrs["min"]), float(attrs["max"])) == (low, high), name
        assert f"{high:,}" in html or str(high) in html  # the help text names the upper bound
    if url.startswith(RL_CHANGELIST):  # the overrides inline too
        attrs = number_input(html, "overrides-__prefix__-limit")
        assert (int(attrs["min"]), int(attrs["max"])) == (0, MAX_LIMIT)


# (fields, overrides, the field that must carry the error): both sides of every bound, and the
# patterns RE2 refuses.
RATELIMIT_OUT_OF_BOUNDS: list[tuple[dict[str, str], list[dict[str, str]] | None, str]] = [
    ({"burst": str(INT32_MAX)}, None, "burst"),
    # 10 per minute with a burst of 6,000,000 takes over a year to refill.
    ({"burst": "6000000"}, None, "burst"),
    ({"algorithm": "fixed_window", "burst": "5"}, None, "burst"),
    ({"period": str(MAX_PERIOD + 1)}, None, "period"),
    ({"period": "0"}, None, "period"),
    ({"limit": str(MAX_LIMIT + 1)}, None, "limit"),
    ({"algorithm": "sliding_window", "limit": str(SLIDING_LOG_MAX + 1)}, None, "limit"),
    ({"priority": str(MAX_PRIORITY + 1)}, None, "priority"),
    ({"priority": str(MIN_PRIORITY - 1)}, None, "priority"),
    ({"match_type": "regex", "pattern": r"^/api/(?!admin)"}, None, "pattern"),
    ({"match_type": "regex", "pattern": r"^/api/(\w+)/\1$"}, None, "pattern"),
    ({"match_type": "regex", "pattern": r"(?:.*a){1000}"}, None, "pattern"),
    (
        {"algorithm": "sliding_window", "limit": "10"},
        [{"key_value": "10.0.0.1", "limit": str(SLIDING_LOG_MAX + 1), "note": ""}],
        "overrides-0-limit",
    ),
    ({}, [{"key_value": "10.0.0.1", "limit": str(MAX_LIMIT + 1), "note": ""}], "overrides-0-limit"),
]


def test_rate_limit_form_refuses_every_value_out_of_bounds(admin_client: Client) -> None:
    slipped = []
    for fields, overrides, field in RATELIMIT_OUT_OF_BOUNDS:
        data = ratelimit_form(overrides, **fields)
        response = admin_client.post(RL_CHANGELIST + "add/", data)
        if RateLimitPolicy.objects.filter(name=data["name"]).exists() or field not in form_errors(response):
            slipped.append((fields, overrides))

    assert slipped == [], "accepted, or refused without naming the field"


def test_rate_limit_form_names_the_largest_burst_that_refills_within_a_year(admin_client: Client) -> None:
    errors = form_errors(admin_client.post(RL_CHANGELIST + "add/", ratelimit_form(burst="6000000")))

    # 10 per minute: one token every 6 s, so a year of 31,622,400 s refills 5,270,400 of them.
    assert f"{MAX_CAPACITY_SECONDS * 10 // 60:,}" in errors["burst"][0]


def test_rate_limit_form_refuses_regex_re2_cannot_express_with_a_clear_message(admin_client: Client) -> None:
    errors = form_errors(
        admin_client.post(RL_CHANGELIST + "add/", ratelimit_form(match_type="regex", pattern=r"^/api/(?=books)"))
    )

    assert "RE2" in errors["pattern"][0]
    assert "lookahead" in errors["pattern"][0]


BREAKER_OUT_OF_BOUNDS: list[tuple[dict[str, str], str]] = [
    ({"failure_statuses": "200"}, "failure_statuses"),
    ({"failure_statuses": "100-599"}, "failure_statuses"),
    ({"failure_statuses": "302,500-599"}, "failure_statuses"),
    ({"stale_max_age": "0"}, "stale_max_age"),
    ({"stale_max_age": str(MAX_STALE_MAX_AGE + 1)}, "stale_max_age"),
    ({"open_seconds": str(INT32_MAX)}, "open_seconds"),
    ({"open_seconds": str(MAX_OPEN_SECONDS + 1)}, "open_seconds"),
    ({"window_size": str(INT32_MAX)}, "window_size"),
    ({"window_size": str(MAX_COUNT_WINDOW + 1)}, "window_size"),
    ({"window_kind": "time", "window_size": str(MAX_TIME_WINDOW + 1)}, "window_size"),
    ({"slow_call_ms": "0"}, "slow_call_ms"),
    ({"slow_call_ms": str(MAX_SLOW_CALL_MS + 1)}, "slow_call_ms"),
    ({"failure_threshold": str(MAX_FAILURE_THRESHOLD + 1)}, "failure_threshold"),
    ({"minimum_calls": str(MAX_MINIMUM_CALLS + 1)}, "minimum_calls"),
    ({"half_open_max_calls": str(MAX_HALF_OPEN_CALLS + 1)}, "half_open_max_calls"),
    ({"failure_rate": "100.01"}, "failure_rate"),
    ({"match_type": "regex", "pattern": r"(?<=/api)/books"}, "pattern"),
]


def test_breaker_form_refuses_every_value_out_of_bounds(admin_client: Client) -> None:
    slipped = []
    for fields, field in BREAKER_OUT_OF_BOUNDS:
        data = breaker_form(**fields)
        response = admin_client.post(CB_CHANGELIST + "add/", data)
        if CircuitBreakerPolicy.objects.filter(name=data["name"]).exists() or field not in form_errors(response):
            slipped.append(fields)

    assert slipped == [], "accepted, or refused without naming the field"


def test_breaker_form_stores_failure_statuses_in_one_canonical_form(admin_client: Client) -> None:
    data = breaker_form(failure_statuses=" 503, 500-502 ,429,504-599")

    assert admin_client.post(CB_CHANGELIST + "add/", data).status_code == 302

    assert CircuitBreakerPolicy.objects.get(name=data["name"]).failure_statuses == "429,500-599"


# --- the database refuses what the form refuses ------------------------------------------------------


@pytest.fixture
def rows(db: None) -> dict[str, int]:
    """One valid row of each table, created without the admin; their ids by table."""
    policy = RateLimitPolicy.objects.create(
        name=unique("db-rl"), pattern="/api/books", algorithm="token_bucket", limit=10, period=60, burst=5
    )
    override = RateLimitOverride.objects.create(policy=policy, key_value="10.0.0.1", limit=20)
    breaker = CircuitBreakerPolicy.objects.create(name=unique("db-cb"), pattern="/api/books")
    return {
        "resilience_ratelimitpolicy": policy.pk,
        "resilience_ratelimitoverride": override.pk,
        "resilience_circuitbreakerpolicy": breaker.pk,
    }


# (table, columns to set): each one out of bounds, or a value no form would store.
OUT_OF_BOUNDS_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("resilience_ratelimitpolicy", {"burst": INT32_MAX}),
    ("resilience_ratelimitpolicy", {"burst": 6_000_000}),  # refills in over a year
    ("resilience_ratelimitpolicy", {"algorithm": "fixed_window"}),  # keeps its burst of 5
    ("resilience_ratelimitpolicy", {"period": MAX_PERIOD + 1}),
    ("resilience_ratelimitpolicy", {"period": 0}),
    ("resilience_ratelimitpolicy", {"limit": MAX_LIMIT + 1}),
    ("resilience_ratelimitpolicy", {"algorithm": "sliding_window", "burst": None, "limit": SLIDING_LOG_MAX + 1}),
    ("resilience_ratelimitpolicy", {"priority": MAX_PRIORITY + 1}),
    ("resilience_ratelimitpolicy", {"name": "two words"}),
    ("resilience_ratelimitpolicy", {"name": 'quo"te'}),
    ("resilience_ratelimitpolicy", {"match_type": "glob"}),
    ("resilience_ratelimitpolicy", {"on_store_failure": "maybe"}),
    ("resilience_ratelimitoverride", {"limit": MAX_LIMIT + 1}),
    ("resilience_circuitbreakerpolicy", {"failure_statuses": "200"}),
    ("resilience_circuitbreakerpolicy", {"failure_statuses": "500-599, 429"}),
    ("resilience_circuitbreakerpolicy", {"stale_max_age": 0}),
    ("resilience_circuitbreakerpolicy", {"open_seconds": INT32_MAX}),
    ("resilience_circuitbreakerpolicy", {"window_size": MAX_COUNT_WINDOW + 1}),
    ("resilience_circuitbreakerpolicy", {"window_kind": "time", "window_size": MAX_TIME_WINDOW + 1}),
    ("resilience_circuitbreakerpolicy", {"slow_call_ms": 0}),
    ("resilience_circuitbreakerpolicy", {"slow_call_ms": MAX_SLOW_CALL_MS + 1}),
    ("resilience_circuitbreakerpolicy", {"failure_threshold": MAX_FAILURE_THRESHOLD + 1}),
    ("resilience_circuitbreakerpolicy", {"minimum_calls": MAX_MINIMUM_CALLS + 1}),
    ("resilience_circuitbreakerpolicy", {"half_open_max_calls": MAX_HALF_OPEN_CALLS + 1}),
    ("resilience_circuitbreakerpolicy", {"name": "new\nline"}),
]


class _Kept(Exception):
    """Roll back an update the database took, so each case starts from the valid rows."""


def test_database_refuses_every_value_out_of_bounds_written_past_the_admin(rows: dict[str, int]) -> None:
    taken = []
    for table, assignments in OUT_OF_BOUNDS_ROWS:
        columns = ", ".join(f'"{column}" = %s' for column in assignments)
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"UPDATE {table} SET {columns} WHERE id = %s", [*assignments.values(), rows[table]])
                raise _Kept
        except IntegrityError:
            continue
        except _Kept:
            taken.append((table, assignments))

    assert taken == [], "the database kept these"


# --- a row that passes the database but not the engine is skipped and reported -----------------------


def assert_reported(caplog: pytest.LogCaptureFixture, name: str, stage: str) -> str:
    """Assert one event=policy_error line for the policy and stage was logged; return its error."""
    lines = [
        r
        for r in caplog.records
        if getattr(r, "event", "") == "policy_error" and r.policy == name and r.stage == stage  # type: ignore[attr-defined]  # a log record's extra field
    ]
    assert lines, f"no policy_error line for {name} ({stage})"
    return lines[0].error  # type: ignore[attr-defined]  # a log record's extra field


def test_regex_re2_refuses_written_by_a_shell_is_skipped_and_reported_everywhere(
    admin_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    good = RateLimitPolicy.objects.create(name=unique("good"), pattern="/api/books", limit=100, period=3600)
    bad = RateLimitPolicy.objects.create(name=unique("bad"), pattern="/api/books", limit=1, period=3600)
    # Lookahead: PostgreSQL takes it (no constraint can know RE2's dialect), the engine cannot.
    RateLimitPolicy.objects.filter(pk=bad.pk).update(match_type="regex", pattern=r"^/api/(?!admin)")
    caplog.set_level(logging.ERROR, logger="resilience")
    before = policy_errors(bad.name, "compile")
    get_runtime().invalidate()

    responses = [APIClient().get("/api/books") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]  # limit 1 would have refused the second
    assert all(r["RateLimit-Policy"].startswith(f'"{good.name}"') for r in responses)
    assert bad.name not in responses[-1]["RateLimit-Policy"]
    assert policy_errors(bad.name, "compile") == before + 1  # once per load of the policies
    assert "RE2" in assert_reported(caplog, bad.name, "compile")
    page = admin_client.get(RL_CHANGELIST).content.decode()
    assert re.search(r'<strong style="color:#c62828"[^>]*>skipped: pattern: RE2 refuses', page)
    data = admin_client.get(DASHBOARD_DATA).json()
    [row] = [e for e in data["policy_errors"] if e["name"] == bad.name]
    assert (row["kind"], row["stage"]) == ("rate limit", "compile")
    assert [p["skipped"] for p in data["policies"] if p["name"] == bad.name] == [True]


def test_override_too_large_for_a_sliding_window_is_skipped_and_reported(
    admin_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RateLimitPolicy.objects.create(
        name=unique("big-override"), pattern="/api/books", algorithm="token_bucket", limit=2, period=3600
    )
    RateLimitOverride.objects.create(policy=policy, key_value="10.0.0.9", limit=SLIDING_LOG_MAX * 5)
    # Each row is within its table's constraints; together they ask a sliding log for 500,000 entries.
    RateLimitPolicy.objects.filter(pk=policy.pk).update(algorithm="sliding_window")
    caplog.set_level(logging.ERROR, logger="resilience")
    get_runtime().invalidate()

    response = APIClient().get("/api/books")

    assert response.status_code == 200
    assert "RateLimit-Policy" not in response
    assert "sliding window" in assert_reported(caplog, policy.name, "compile")
    assert "skipped: override 10.0.0.9" in admin_client.get(RL_CHANGELIST).content.decode()


def test_breaker_the_engine_cannot_use_is_skipped_and_its_pages_still_answer(
    admin_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreakerPolicy.objects.create(name=unique("bad-cb"), pattern="/api/books", failure_statuses="404")
    CircuitBreakerPolicy.objects.filter(pk=breaker.pk).update(match_type="regex", pattern=r"(?<=/api)/books")
    caplog.set_level(logging.ERROR, logger="resilience")
    get_runtime().invalidate()

    response = APIClient().get("/api/books")

    assert response.status_code == 200
    assert "X-Circuit-Breaker-State" not in response
    assert_reported(caplog, breaker.name, "compile")
    page = admin_client.get(CB_CHANGELIST)
    assert page.status_code == 200
    assert "skipped: pattern: RE2 refuses" in page.content.decode()
    data = admin_client.get(DASHBOARD_DATA).json()
    assert [(e["kind"], e["stage"]) for e in data["policy_errors"] if e["name"] == breaker.name] == [
        ("breaker", "compile")
    ]
    assert admin_client.get("/health/breakers").status_code == 200


# --- a store refusal for one request: that request falls back, the store stays in use ---------------


@pytest.mark.parametrize(("on_store_failure", "status"), [("allow", 200), ("deny", 503)])
def test_admission_refused_by_the_store_follows_on_store_failure_for_that_request_only(
    admin_client: Client, caplog: pytest.LogCaptureFixture, on_store_failure: str, status: int
) -> None:
    limit = RateLimitPolicy.objects.create(
        name=unique("data-rl"), pattern="/api/books", limit=100, period=3600, on_store_failure=on_store_failure
    )
    breaker = CircuitBreakerPolicy.objects.create(name=unique("data-cb"), pattern="/api/books")
    runtime = get_runtime()
    runtime.invalidate()
    # Someone wrote a string where the breaker's state hash lives: the admission script gets WRONGTYPE.
    client = runtime.shared.client  # type: ignore[attr-defined]  # the Redis store here
    client.set(runtime.breaker_shared.keys_for(breaker.name)[0], "not a hash")
    caplog.set_level(logging.ERROR, logger="resilience")

    response = APIClient().get("/api/books")

    assert response.status_code == status
    if status == 503:
        assert response["Content-Type"] == "application/problem+json"
    assert runtime.store_available(), "one refused script must not take Redis away from every request"
    for name in (limit.name, breaker.name):
        assert "WRONGTYPE" in assert_reported(caplog, name, "admit")
    assert metrics.ratelimit_decisions.labels(limit.name, "store_error")._value.get() >= 1
    page = admin_client.get(RL_CHANGELIST).content.decode()
    assert re.search(r'<strong style="color:#c62828"[^>]*>admit error \d+ s ago: ', page)

    client.delete(runtime.breaker_shared.keys_for(breaker.name)[0])
    assert APIClient().get("/api/books").status_code == 200


def test_breaker_state_written_by_hand_reads_as_closed(db: None) -> None:
    breaker = CircuitBreakerPolicy.objects.create(name=unique("garbled-cb"), pattern="/api/books")
    runtime = get_runtime()
    runtime.invalidate()
    client = runtime.shared.client  # type: ignore[attr-defined]  # the Redis store here
    client.hset(runtime.breaker_shared.keys_for(breaker.name)[0], mapping={"st": "exploded", "gen": "x", "cf": "?"})

    response = APIClient().get("/api/books")

    assert response.status_code == 200
    assert response["X-Circuit-Breaker-State"] == "closed"
    assert runtime.store_available()


# --- the Lua scripts clamp or refuse what the engine would never send ----------------------------------


@pytest.fixture
def limiter_script(db: None) -> Iterator[tuple[RedisLimiterStore, list[str]]]:
    """The limiter script and keys of its own, to call with arguments validate() would refuse."""
    store = get_runtime().shared
    assert isinstance(store, RedisLimiterStore)
    keys = [f"{key_prefix()}rl:{{lua-bounds-{next(_names)}}}", f"{key_prefix()}lua-bounds-version"]
    yield store, keys
    store.client.delete(*keys)


def run_limiter(store: RedisLimiterStore, keys: list[str], algorithm: str, limit: str, period: str, burst: str) -> Any:
    """Run the limiter script on one spec as a caller that skipped validate() would; return (allowed, limit)."""
    reply = store._script(keys=keys, args=["", "1", "1", algorithm, limit, period, burst, "1"])
    return reply[2], reply[3]


# (algorithm, limit, period, burst) as a caller that skipped validate() might pass them -> what the
# script decides on them: (allowed, the quota it reports).
CLAMPED = {
    ("token_bucket", "1", "60", str(INT32_MAX)): (1, MAX_CAPACITY_SECONDS // 60),  # refills within a year
    ("token_bucket", "1", "60", "0"): (1, 1),
    ("token_bucket", str(MAX_LIMIT * 10), "1", ""): (1, MAX_LIMIT),
    ("sliding_window", str(MAX_LIMIT), "60", ""): (1, SLIDING_LOG_MAX),
    ("fixed_window", "-5", "60", ""): (0, 0),  # a negative limit is 0: nothing is admitted
    ("fixed_window", "3", "0", ""): (1, 3),  # a period of 0 is 1 s
    ("fixed_window", "3", "1e300", ""): (1, 3),
    ("fixed_window", "2.7", "60", ""): (1, 2),
}


def test_limiter_script_clamps_numbers_out_of_bounds(limiter_script: tuple[RedisLimiterStore, list[str]]) -> None:
    store, keys = limiter_script
    decided = {}
    for args in CLAMPED:
        decided[args] = run_limiter(store, keys, *args)
        store.client.delete(keys[0])

    assert decided == CLAMPED


@pytest.mark.parametrize(
    ("algorithm", "limit", "period", "burst", "message"),
    [
        ("token_bucket", "ten", "60", "", "limit is not a number"),
        ("token_bucket", "10", "nan", "", "period is not a number"),
        ("token_bucket", "10", "60", "{}", "burst is not a number"),
        ("leaky_bucket", "10", "60", "", "unknown algorithm"),
    ],
)
def test_limiter_script_refuses_what_is_not_a_number_with_an_error_reply(
    limiter_script: tuple[RedisLimiterStore, list[str]],
    algorithm: str,
    limit: str,
    period: str,
    burst: str,
    message: str,
) -> None:
    store, keys = limiter_script

    with pytest.raises(redis.ResponseError, match=message):
        run_limiter(store, keys, algorithm, limit, period, burst)


def test_breaker_script_clamps_config_numbers_and_refuses_what_is_not_one(db: None) -> None:
    store = get_runtime().breaker_shared
    assert isinstance(store, RedisBreakerStore)
    name = unique("lua-cb")
    args = config_args(BreakerConfig(name=name))
    huge = [args[0], args[1], str(INT32_MAX), args[3], args[4], "1e12", str(INT32_MAX)]
    try:
        store.force(name, State.FORCED_OPEN)

        permit = store._script(keys=store.keys_for(name), args=["allow", "", *huge])[0]

        assert float(permit[3]) == MAX_OPEN_SECONDS  # a forced-open breaker's retry hint is open_seconds
        with pytest.raises(redis.ResponseError, match="open_seconds is not a number"):
            store._script(keys=store.keys_for(name), args=["allow", "", *huge[:5], "soon", huge[6]])
        with pytest.raises(redis.ResponseError, match="unknown window kind"):
            store._script(keys=store.keys_for(name), args=["allow", "", *huge[:3], "sliding", *huge[4:]])
    finally:
        store.client.delete(*store.keys_for(name))


# --- whatever the admin accepts, no request fails ----------------------------------------------------

# Numbers as staff might type them: on and around every bound, and anything at all.
_EDGES = [
    0, 1, 2, 60, 3_600, 86_400, 86_401, 100_000, 100_001, 600_000, 600_001, 1_000_000, 1_000_001, MAX_LIMIT,
    MAX_LIMIT + 1, MAX_PERIOD, MAX_PERIOD + 1, MAX_CAPACITY_SECONDS * 10 // 60, INT32_MAX, 2**31, 2**63,
    MIN_PRIORITY, MIN_PRIORITY - 1, MAX_PRIORITY + 1, -1,
]  # fmt: skip
WILD = st.one_of(
    st.sampled_from(_EDGES).map(str),
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["", "1.5", "-0", "1e3", " 7 ", "abc"]),
)


def inside(low: int, high: int, typical: int) -> st.SearchStrategy[str]:
    """Return form text for a number within [low, high]: often small, often exactly a bound."""
    return st.one_of(
        st.integers(low, min(high, max(typical, low))), st.integers(low, high), st.sampled_from([low, high])
    ).map(str)


_VALID_MATCHES = [
    ("prefix", "/"),
    ("prefix", "/api/books"),
    ("regex", r"^/api/(a+)+$"),  # catastrophic for a backtracking engine
    ("regex", r"^/api/books"),
    ("regex", r"^/api/books/\d+$"),
    ("regex", r"\p{L}+"),
    ("route", "book-list"),
    ("tag", "search"),
]
WILD_MATCHES = st.one_of(
    st.sampled_from(
        [("regex", r"^/api/(?!orders)"), ("regex", r"(?:.*a){1000}"), ("regex", "["), ("prefix", "api"), ("code", "x")]
    ),
    st.tuples(st.just("regex"), st.text(max_size=12)),
)


def one_wild(draw: st.DrawFn, fields: dict[str, Any], wild: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """Replace at most one field by a value staff should not type (edges, junk), so most forms stay valid."""
    name = draw(st.sampled_from([None, None, *wild]))
    if name is not None:
        value = draw(wild[name])
        if name == "match":
            fields["match_type"], fields["pattern"] = value
        else:
            fields[name] = value
    return fields


@st.composite
def ratelimit_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Return the fields of a rate-limit add form as staff might fill them in."""
    algorithm = draw(st.sampled_from([a.value for a in Algorithm]))
    key, header_name = draw(st.sampled_from([("ip", ""), ("user", ""), ("global", ""), ("header", "X-App-Id")]))
    match_type, pattern = draw(st.sampled_from(_VALID_MATCHES))
    fields = {
        "priority": draw(inside(MIN_PRIORITY, MAX_PRIORITY, 100)),
        "methods": draw(st.sampled_from(["", "", "GET", "get,post", "BREW"])),
        "match_type": match_type,
        "pattern": pattern,
        "key": key,
        "header_name": header_name,
        "algorithm": algorithm,
        "limit": draw(inside(0, SLIDING_LOG_MAX if algorithm == "sliding_window" else MAX_LIMIT, 20)),
        "period": draw(inside(1, MAX_PERIOD, 120)),
        "burst": draw(st.one_of(st.just(""), inside(1, MAX_BURST, 50))) if algorithm == "token_bucket" else "",
        "rate": draw(st.sampled_from(["", "", "", "5/minute", "1000000000/1s", "1/366d", "0/1s"])),
        "on_store_failure": draw(st.sampled_from(["allow", "deny"])),
        "overrides": [{"key_value": "127.0.0.1", "limit": limit, "note": ""} for limit in draw(st.lists(
            inside(0, SLIDING_LOG_MAX if algorithm == "sliding_window" else MAX_LIMIT, 20), max_size=1))],
    }  # fmt: skip
    return one_wild(
        draw,
        fields,
        {
            "priority": WILD,
            "methods": st.just("G E T"),
            "match": WILD_MATCHES,
            "key": st.sampled_from(["all", "header"]),
            "algorithm": st.just("leaky"),
            "limit": WILD,
            "period": WILD,
            "burst": WILD,
            "rate": st.sampled_from(["x/y", "1/0s", "99999999999/1s"]),
            "overrides": st.lists(WILD, min_size=1, max_size=1).map(
                lambda limits: [{"key_value": "127.0.0.1", "limit": limits[0], "note": ""}]
            ),
        },
    )


@st.composite
def breaker_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Return the fields of a breaker add form as staff might fill them in."""
    window_kind = draw(st.sampled_from(["count", "time"]))
    match_type, pattern = draw(st.sampled_from(_VALID_MATCHES))
    fields = {
        "match_type": match_type,
        "pattern": pattern,
        "failure_statuses": draw(st.sampled_from(["500-599", "404", "404,500-599", "429 , 503", "400-599"])),
        "slow_call_ms": draw(st.one_of(st.just(""), inside(1, MAX_SLOW_CALL_MS, 2000))),
        "failure_threshold": draw(inside(1, MAX_FAILURE_THRESHOLD, 4)),
        "failure_rate": draw(st.one_of(inside(0, 100, 50), st.sampled_from(["33.33", "0.01"]))),
        "window_kind": window_kind,
        "window_size": draw(inside(1, MAX_TIME_WINDOW if window_kind == "time" else MAX_COUNT_WINDOW, 20)),
        "minimum_calls": draw(inside(0, MAX_MINIMUM_CALLS, 10)),
        "open_seconds": draw(inside(1, MAX_OPEN_SECONDS, 60)),
        "half_open_max_calls": draw(inside(1, MAX_HALF_OPEN_CALLS, 3)),
        "fallback": draw(st.sampled_from(["error", "stale"])),
        "stale_max_age": draw(inside(1, MAX_STALE_MAX_AGE, 600)),
    }
    return one_wild(
        draw,
        fields,
        {
            "match": WILD_MATCHES,
            "failure_statuses": st.sampled_from(["200", "100-599", "599-500", "abc", "", "302,500-599"]),
            "slow_call_ms": WILD,
            "failure_threshold": WILD,
            "failure_rate": st.one_of(WILD, st.sampled_from(["100.5", "1e2", "0.001", "-0.01"])),
            "window_kind": st.just("sliding"),
            "window_size": WILD,
            "minimum_calls": WILD,
            "open_seconds": WILD,
            "half_open_max_calls": WILD,
            "fallback": st.just("teapot"),
            "stale_max_age": WILD,
        },
    )


# Paths each request set visits: a 200, a 404, an over-long crafted path and the search view.
PATHS = ["/api/books", MISSING, "/api/" + "a" * 3000 + "!", "/api/books/search?q=x"]
HYPOTHESIS = settings(
    max_examples=50,
    deadline=None,
    database=None,  # nothing written into the worktree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def ratelimit_example(**fields: Any) -> dict[str, Any]:
    """Return a complete set of rate-limit form fields: a plain per-IP token bucket, with these changed."""
    base = {"priority": "100", "methods": "", "match_type": "prefix", "pattern": "/", "key": "ip", "header_name": ""}
    base.update(algorithm="token_bucket", limit="1", period="60", burst="", rate="", on_store_failure="allow")
    return {**base, "overrides": [], **fields}


def breaker_example(**fields: Any) -> dict[str, Any]:
    """Return a complete set of breaker form fields: a plain count-window breaker, with these changed."""
    base = {"match_type": "prefix", "pattern": "/api/books", "failure_statuses": "500-599", "slow_call_ms": ""}
    base.update(failure_threshold="2", failure_rate="0", window_kind="count", window_size="20", minimum_calls="10")
    return {
        **base,
        "open_seconds": "30",
        "half_open_max_calls": "1",
        "fallback": "error",
        "stale_max_age": "300",
        **fields,
    }


@pytest.mark.parametrize("mode", ["enforce", "dry_run"])
@HYPOTHESIS
@given(fields=ratelimit_fields())
# What staff typed when requests failed, tried every run before anything generated.
@example(fields=ratelimit_example(burst=str(INT32_MAX)))
@example(fields=ratelimit_example(match_type="regex", pattern=r"^/api/(a+)+$", limit="1000"))
def test_whatever_the_rate_limit_form_accepts_no_request_fails(
    admin_client: Client, mode: str, fields: dict[str, Any]
) -> None:
    RateLimitPolicy.objects.all().delete()
    get_runtime().invalidate()  # the previous example's policy may limit the admin itself
    form = {name: value for name, value in fields.items() if name != "overrides"}  # examples are shared: no pop
    data = ratelimit_form(fields["overrides"], mode=mode, **form)

    response = admin_client.post(RL_CHANGELIST + "add/", data)

    assert response.status_code in (200, 302), "the admin itself never fails on what staff type"
    event("refused by the form" if response.status_code == 200 else "saved")
    if response.status_code == 200:
        return  # refused, with the reasons on the form
    policy = RateLimitPolicy.objects.get(name=data["name"])
    assert policy_problem(policy) is None, "what the form accepts, the engine accepts"
    assert_requests_never_fail()


@pytest.mark.parametrize("mode", ["enforce", "dry_run"])
@HYPOTHESIS
@given(fields=breaker_fields())
@example(fields=breaker_example(fallback="stale", stale_max_age="0"))
@example(fields=breaker_example(failure_statuses="200", open_seconds=str(INT32_MAX), window_size=str(INT32_MAX)))
@example(fields=breaker_example(match_type="regex", pattern=r"^/api/(a+)+$"))
def test_whatever_the_breaker_form_accepts_no_request_fails(
    admin_client: Client, mode: str, fields: dict[str, Any]
) -> None:
    CircuitBreakerPolicy.objects.all().delete()
    RateLimitPolicy.objects.all().delete()
    # The breaker is decided in the same round trip as a rate limit in the given mode.
    RateLimitPolicy.objects.create(name=unique("beside"), pattern="/api/", limit=1000, period=60, mode=mode)
    get_runtime().invalidate()  # the previous example's breaker may be open on the admin itself
    data = breaker_form(**fields)

    response = admin_client.post(CB_CHANGELIST + "add/", data)

    assert response.status_code in (200, 302), "the admin itself never fails on what staff type"
    event("refused by the form" if response.status_code == 200 else "saved")
    if response.status_code == 200:
        return
    policy = CircuitBreakerPolicy.objects.get(name=data["name"])
    assert policy_problem(policy) is None, "what the form accepts, the engine accepts"
    assert parse_status_set(policy.failure_statuses) <= frozenset(range(400, 600))
    assert_requests_never_fail()


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail with TimeoutError, instead of hanging, when the block takes longer than seconds (SIGALRM)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"a request took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_requests_never_fail() -> None:
    """Send the request set twice (enough to trip a breaker of threshold <= 4); none may fail, hang or lose Redis."""
    runtime = get_runtime()
    runtime.invalidate()  # no commit inside a test: tell this process now
    with within(20):
        send_request_set(runtime)


def send_request_set(runtime: Runtime) -> None:
    client = APIClient()
    for path in PATHS * 2:
        response = client.get(path, HTTP_X_APP_ID="partner")
        assert response.status_code != 500, (path, response.content[:300])
        if response.status_code >= 500:
            assert response.status_code == 503
            assert response["Content-Type"] == "application/problem+json"
    response = client.post("/api/orders", {"lines": []}, format="json")
    assert response.status_code < 500 or response.status_code == 503
    assert runtime.store_available(), "nothing staff typed may take Redis away from the workers"


# --- migration 0006 clamps what is already out of bounds, and loses no row ------------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_clamps_rows_out_of_bounds_and_keeps_every_row() -> None:
    before, after = ("resilience", "0005_search_ip_token_bucket"), ("resilience", "0006_policy_bounds")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    try:
        old = MigrationExecutor(connection).loader.project_state([before]).apps
        rl = old.get_model("resilience", "RateLimitPolicy")
        override = old.get_model("resilience", "RateLimitOverride")
        cb = old.get_model("resilience", "CircuitBreakerPolicy")
        common = {"pattern": "/api/books", "key": "ip", "mode": "enforce", "on_store_failure": "allow", "epoch": 0}
        rl.objects.create(name="huge-burst", algorithm="token_bucket", limit=1, period=60, burst=INT32_MAX, **common)
        sliding = rl.objects.create(name="big-log", algorithm="sliding_window", limit=500_000, period=60, **common)
        override.objects.create(policy=sliding, key_value="10.0.0.1", limit=900_000, note="")
        rl.objects.create(
            name="Two Words", algorithm="fixed_window", limit=5, period=INT32_MAX, burst=7, priority=-(10**6), **common
        )
        cb.objects.create(
            name="wide open",
            pattern="/api/books",
            failure_statuses="200, 429, 500-599",
            slow_call_ms=0,
            failure_threshold=INT32_MAX,
            window_kind="time",
            window_size=7200,
            minimum_calls=INT32_MAX,
            open_seconds=INT32_MAX,
            half_open_max_calls=5000,
            stale_max_age=0,
        )
        cb.objects.create(name="ok-cb", pattern="/api/books", failure_statuses="abc", window_size=INT32_MAX)

        MigrationExecutor(connection).migrate([after])
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    # Migrating on to the leaf also runs the later data migrations, which add their rows: the
    # sign-in limits (0009) and the database breaker (0008).
    sign_in = [d["name"] for d in importlib.import_module("resilience.migrations.0009_login_limits").DEFAULTS]
    assert RateLimitPolicy.objects.exclude(name__in=sign_in).count() == 3
    assert RateLimitOverride.objects.count() == 1
    assert CircuitBreakerPolicy.objects.exclude(name="database").count() == 2
    burst = RateLimitPolicy.objects.get(name="huge-burst")
    assert (burst.limit, burst.period, burst.burst) == (1, 60, MAX_CAPACITY_SECONDS // 60)
    assert RateLimitPolicy.objects.get(name="big-log").limit == SLIDING_LOG_MAX
    assert RateLimitOverride.objects.get().limit == SLIDING_LOG_MAX
    words = RateLimitPolicy.objects.get(name="two-words")
    assert (words.period, words.burst, words.priority) == (MAX_PERIOD, None, MIN_PRIORITY)
    wide = CircuitBreakerPolicy.objects.get(name="wide-open")
    assert (wide.failure_statuses, wide.slow_call_ms, wide.failure_threshold) == (
        "429,500-599",
        None,
        MAX_FAILURE_THRESHOLD,
    )
    assert (wide.window_size, wide.minimum_calls, wide.open_seconds) == (
        MAX_TIME_WINDOW,
        MAX_MINIMUM_CALLS,
        MAX_OPEN_SECONDS,
    )
    assert (wide.half_open_max_calls, wide.stale_max_age) == (MAX_HALF_OPEN_CALLS, 1)
    ok = CircuitBreakerPolicy.objects.get(name="ok-cb")
    assert (ok.failure_statuses, ok.window_size) == ("500-599", MAX_COUNT_WINDOW)
    for policy in [*RateLimitPolicy.objects.all(), *CircuitBreakerPolicy.objects.all()]:
        assert policy_problem(policy) is None, policy.name
