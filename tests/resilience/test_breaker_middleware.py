"""What clients see from the circuit breakers: route breakers, the search guard, stale copies, degraded stores."""

from __future__ import annotations

import copy
import itertools
import re
import time
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.http import Http404, HttpResponse
from redis.backoff import NoBackoff
from redis.retry import Retry
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.test import APIClient

from bookstore.problems import problem_type
from catalog import selectors
from catalog.models import Book
from resilience.engine.breaker import State
from resilience.http.guards import breaker, breaker_state_changed
from resilience.models import CircuitBreakerPolicy, RateLimitPolicy
from resilience.ops import metrics
from resilience.ops.faults import DependencyFailed
from resilience.runtime import Runtime, get_runtime, reset_runtime
from resilience.runtime.policies import breaker_config
from resilience.stores.redis_breaker import RedisBreakerStore
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.conftest import make_breaker as shared_make_breaker

REDUCED_CAPACITY = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
DEPENDENCY_UNAVAILABLE = problem_type("dependency-unavailable")
MISSING = "/api/books/999999"  # answers 404: a failure for breakers with failure_statuses="404"
DETAIL = r"^/api/books/\d+$"
SEARCH = "/api/books/search?q=tolkien"

_names = itertools.count(1)


def make_breaker(**fields: Any) -> CircuitBreakerPolicy:
    """Create a breaker on book pages that counts a 404 as a failure, unless told otherwise."""
    fields.setdefault("name", f"cb-{next(_names)}")
    fields.setdefault("match_type", "regex")
    fields.setdefault("pattern", DETAIL if fields["match_type"] == "regex" else fields["name"])
    fields.setdefault("failure_statuses", "404")
    return shared_make_breaker(**fields)


def state_of(policy: CircuitBreakerPolicy) -> State:
    return get_runtime().breaker_store()[0].snapshot(breaker_config(policy)).state


def trip_long_ago(policy: CircuitBreakerPolicy) -> None:
    """Trip the breaker an hour ago in the shared store, so its open period is already over."""
    cfg = breaker_config(policy)
    store, _ = get_runtime().breaker_store()
    then = time.time() - 3600
    store.reset(cfg.name, then)
    for _ in range(cfg.failure_threshold):
        permit, _ = store.allow(cfg, then)
        store.record(cfg, permit.generation, False, then)
    assert store.snapshot(cfg).state is State.HALF_OPEN


def assert_open_problem(response: HttpResponse, open_seconds: int) -> int:
    """Check a breaker's 503 against the client contract and return its Retry-After."""
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == REDUCED_CAPACITY
    assert body["status"] == 503
    assert response["X-Circuit-Breaker-State"] == "open"
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= open_seconds
    return retry_after


def assert_dependency_failed(response: HttpResponse) -> None:
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == DEPENDENCY_UNAVAILABLE


def transitions(name: str, src: str, dst: str) -> float:
    return metrics.breaker_transitions.labels(name, src, dst)._value.get()


def rejections(name: str) -> float:
    return metrics.breaker_rejections.labels(name)._value.get()


@pytest.fixture(autouse=True)
def _search_breaker_closed(db: None) -> None:
    """Start with the shared "search" breaker closed: its state outlives the tests that trip it."""
    runtime = get_runtime()
    if runtime.store_available():
        runtime.breaker_shared.reset("search")


class Faults:
    """Switch faults through the staff API and read how many calls reached a fault point."""

    def __init__(self, client: APIClient) -> None:
        self.client = client

    def set(self, name: str, mode: str, **extra: int) -> None:
        response = self.client.put(f"/api/ops/faults/{name}", {"mode": mode, **extra}, format="json")
        assert response.status_code == 200, response.content

    def clear(self, name: str) -> None:
        assert self.client.delete(f"/api/ops/faults/{name}").status_code == 204

    def calls(self, name: str) -> int:
        response = self.client.get(f"/api/ops/faults/{name}")
        assert response.status_code == 200
        return response.json()["calls"]


@pytest.fixture
def faults(settings: Any, staff_client: APIClient) -> Faults:
    """Turn fault injection on, in a cache key space of this test's own."""
    settings.FAULT_INJECTION = True
    caches = copy.deepcopy(settings.CACHES)
    caches["default"]["KEY_PREFIX"] = f"{settings.RESILIENCE_KEY_PREFIX}faults-{next(_names)}"
    settings.CACHES = caches
    return Faults(staff_client)


# --- route breakers ---------------------------------------------------------------------------------


def test_route_breaker_trips_after_consecutive_failures_and_answers_503_problem(
    db: None, make_book: Callable[..., Book]
) -> None:
    policy = make_breaker(failure_threshold=3, open_seconds=30)
    book = make_book()
    client = APIClient()

    first = client.get(f"/api/books/{book.pk}")
    failures = [client.get(MISSING) for _ in range(3)]
    refused = client.get(f"/api/books/{book.pk}")

    assert first.status_code == 200
    assert first["X-Circuit-Breaker-State"] == "closed"
    assert [r.status_code for r in failures] == [404, 404, 404]
    assert [r["X-Circuit-Breaker-State"] for r in failures] == ["closed"] * 3
    retry_after = assert_open_problem(refused, 30)
    assert retry_after >= 29
    assert refused.json()["breaker"] == policy.name
    assert state_of(policy) is State.OPEN


def test_success_in_between_resets_the_consecutive_count(db: None, make_book: Callable[..., Book]) -> None:
    policy = make_breaker(failure_threshold=3)
    book = make_book()
    client = APIClient()

    for _ in range(3):
        assert client.get(MISSING).status_code == 404
        assert client.get(MISSING).status_code == 404
        assert client.get(f"/api/books/{book.pk}").status_code == 200

    assert state_of(policy) is State.CLOSED


def test_breaker_leaves_unmatched_paths_alone(db: None) -> None:
    make_breaker(failure_threshold=1, pattern=r"^/api/books/999999$")
    client = APIClient()
    assert client.get(MISSING).status_code == 404

    response = client.get("/api/books")

    assert response.status_code == 200
    assert "X-Circuit-Breaker-State" not in response


def test_half_open_trial_carries_the_state_and_its_success_closes(db: None, make_book: Callable[..., Book]) -> None:
    policy = make_breaker(failure_threshold=1, half_open_max_calls=1)
    book = make_book()
    trip_long_ago(policy)
    client = APIClient()

    trial = client.get(f"/api/books/{book.pk}")
    after = client.get(f"/api/books/{book.pk}")

    assert trial.status_code == 200
    assert trial["X-Circuit-Breaker-State"] == "half-open"
    assert after["X-Circuit-Breaker-State"] == "closed"
    assert state_of(policy) is State.CLOSED


def test_half_open_failure_reopens_for_a_fresh_open_period(db: None) -> None:
    policy = make_breaker(failure_threshold=1, half_open_max_calls=2, open_seconds=30)
    trip_long_ago(policy)
    client = APIClient()

    trial = client.get(MISSING)
    refused = client.get(MISSING)

    assert trial.status_code == 404
    assert trial["X-Circuit-Breaker-State"] == "half-open"
    # Tripped an hour ago: a Retry-After near 30 s can only come from the fresh period.
    assert assert_open_problem(refused, 30) >= 29


@pytest.mark.parametrize(
    ("outcomes", "tripped"),
    [
        ("fff", False),  # 100 % failures, but below the 4 calls the rate needs
        ("ssf", False),  # 33 %
        ("sssf", False),  # 25 %: under the 50 % rate
        ("ssff", True),  # 50 % of 4 calls
        ("sfsf", True),  # a success in between does not help: no consecutive rule here
    ],
)
def test_failure_rate_trips_only_at_the_rate_with_minimum_calls(
    db: None, make_book: Callable[..., Book], outcomes: str, tripped: bool
) -> None:
    policy = make_breaker(failure_threshold=0, failure_rate=50, window_size=10, minimum_calls=4)
    good = f"/api/books/{make_book().pk}"
    client = APIClient()

    statuses = [client.get(MISSING if o == "f" else good).status_code for o in outcomes]

    assert statuses == [404 if o == "f" else 200 for o in outcomes]
    assert state_of(policy) is (State.OPEN if tripped else State.CLOSED)
    if tripped:
        assert_open_problem(client.get(good), policy.open_seconds)


def test_successes_reach_the_shared_breaker_in_a_batch_and_before_the_next_failure(
    db: None, make_book: Callable[..., Book]
) -> None:
    """Successes are reported in batches: a failure is still judged as if each had been recorded at once."""
    # In order, [S, S, F, F] is 2 failures of 4 calls (under 60 %); with the failures judged before the
    # successes, [F, F, S] would be 2 of 3 and trip.
    policy = make_breaker(failure_threshold=0, failure_rate=60, window_size=10, minimum_calls=3)
    good = f"/api/books/{make_book().pk}"
    client = APIClient()
    store, _ = get_runtime().breaker_store()
    cfg = breaker_config(policy)

    statuses = [client.get(url).status_code for url in (good, good, MISSING, MISSING, good)]

    assert statuses == [200, 200, 404, 404, 200]
    # No request follows the last success: its batch is reported by itself.
    deadline = time.monotonic() + 5
    while (snapshot := store.snapshot(cfg)).window_calls < 5:
        assert time.monotonic() < deadline, "the last success never reached the shared store"
        time.sleep(0.01)
    assert (snapshot.state, snapshot.window_calls, snapshot.window_failures) == (State.CLOSED, 5, 2)


@pytest.mark.parametrize("match_type", ["prefix", "code"])
def test_slow_calls_count_as_failures(db: None, faults: Faults, match_type: str) -> None:
    """A search slower than slow_call_ms fails, though it answered 200; the route and the code guard agree."""
    policy = make_breaker(
        # A route policy gets a name of its own: the code guard would also count one named "search".
        name="search" if match_type == "code" else "search-route",
        match_type=match_type,
        pattern="/api/books/search",
        failure_statuses="500-599",
        slow_call_ms=20,
        failure_threshold=2,
    )
    faults.set("search", "slow", delay_ms=60)
    client = APIClient()

    slow = [client.get(SEARCH) for _ in range(2)]
    refused = client.get(SEARCH)

    assert [r.status_code for r in slow] == [200, 200]
    assert_open_problem(refused, policy.open_seconds)
    assert faults.calls("search") == 2


def test_quick_calls_under_slow_call_threshold_succeed(db: None, faults: Faults) -> None:
    policy = make_breaker(
        name="search", match_type="code", failure_statuses="500-599", slow_call_ms=5000, failure_threshold=1
    )
    faults.set("search", "slow", delay_ms=10)

    assert [APIClient().get(SEARCH).status_code for _ in range(3)] == [200, 200, 200]
    assert state_of(policy) is State.CLOSED


def test_outcome_of_a_call_admitted_before_a_reset_is_ignored(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The call was admitted, then an operator reset the breaker, then the call failed: still closed."""
    policy = make_breaker(
        match_type="prefix", pattern="/api/books/search", failure_statuses="500-599", failure_threshold=1
    )

    def reset_then_fail(name: str) -> None:
        call_command("breakers", "reset", policy.name, stdout=StringIO())
        raise DependencyFailed("down", dependency=name)

    monkeypatch.setattr(selectors, "fault_point", reset_then_fail)
    late = APIClient().get(SEARCH)

    assert_dependency_failed(late)
    assert state_of(policy) is State.CLOSED

    # The same failure without the reset in between trips the breaker (threshold 1).
    def fail(name: str) -> None:
        raise DependencyFailed("down", dependency=name)

    monkeypatch.setattr(selectors, "fault_point", fail)
    assert_dependency_failed(APIClient().get(SEARCH))
    assert state_of(policy) is State.OPEN


def test_call_refused_by_a_second_breaker_does_not_count_as_a_trial_success(db: None) -> None:
    """Two breakers on one route: when the second refuses, the first one's trial never ran."""
    first = make_breaker(
        name="aa-books", match_type="prefix", pattern="/api/books/", failure_statuses="500-599", failure_threshold=1
    )
    second = make_breaker(name="bb-missing", failure_threshold=1, pattern=r"^/api/books/999999$")
    client = APIClient()
    assert client.get(MISSING).status_code == 404
    assert state_of(second) is State.OPEN
    trip_long_ago(first)

    refused = client.get(MISSING)

    assert_open_problem(refused, second.open_seconds)
    assert refused.json()["breaker"] == second.name
    assert state_of(first) is State.HALF_OPEN  # not closed by a call that never ran


def test_limit_refused_request_never_takes_a_half_open_trial_slot(db: None, make_book: Callable[..., Book]) -> None:
    book = make_book()
    path = f"/api/books/{book.pk}"
    RateLimitPolicy.objects.create(name="detail-ip", match_type="regex", pattern=DETAIL, limit=1, period=3600)
    policy = make_breaker(failure_threshold=1, half_open_max_calls=1)
    client = APIClient()
    assert client.get(path, REMOTE_ADDR="192.0.2.10").status_code == 200  # spends the client's quota
    trip_long_ago(policy)

    refused = [client.get(path, REMOTE_ADDR="192.0.2.10") for _ in range(3)]

    assert [r.status_code for r in refused] == [429, 429, 429]
    snapshot = get_runtime().breaker_shared.snapshot(breaker_config(policy))
    assert snapshot.state is State.HALF_OPEN
    assert snapshot.retry_after == 0  # the one trial slot is still free
    trial = client.get(path, REMOTE_ADDR="192.0.2.11")
    assert trial.status_code == 200
    assert trial["X-Circuit-Breaker-State"] == "half-open"
    assert state_of(policy) is State.CLOSED


def test_server_timing_says_whether_the_layer_refused_or_admitted(db: None, make_book: Callable[..., Book]) -> None:
    make_breaker(failure_threshold=1, open_seconds=30)
    book = make_book()
    client = APIClient()

    admitted = client.get(f"/api/books/{book.pk}")
    client.get(MISSING)
    refused = client.get(f"/api/books/{book.pk}")

    assert re.fullmatch(
        r'resilience;dur=\d+\.\d\d;desc="admitted", resilience-cpu;dur=\d+\.\d\d', admitted["Server-Timing"]
    )
    assert_open_problem(refused, 30)
    assert re.fullmatch(
        r'resilience;dur=\d+\.\d\d;desc="refused", resilience-cpu;dur=\d+\.\d\d', refused["Server-Timing"]
    )


# --- the code guard on book search -----------------------------------------------------------------


def test_search_guard_fails_fast_once_open_without_reaching_the_dependency(db: None, faults: Faults) -> None:
    make_breaker(name="search", match_type="code", failure_statuses="500-599", failure_threshold=3, open_seconds=20)
    faults.set("search", "error")
    client = APIClient()

    failed = [client.get(SEARCH) for _ in range(3)]
    reached = faults.calls("search")
    refused = [client.get(SEARCH) for _ in range(5)]

    for response in failed:
        assert_dependency_failed(response)
    assert reached == 3
    for response in refused:
        assert_open_problem(response, 20)
    assert faults.calls("search") == reached  # nothing got through to the failing dependency


def test_search_guard_recovers_after_the_fault_is_cleared(db: None, faults: Faults) -> None:
    policy = make_breaker(name="search", match_type="code", failure_statuses="500-599", failure_threshold=1)
    faults.set("search", "error")
    assert_dependency_failed(APIClient().get(SEARCH))
    assert state_of(policy) is State.OPEN
    faults.clear("search")
    trip_long_ago(policy)  # skip the open period

    assert [APIClient().get(SEARCH).status_code for _ in range(3)] == [200, 200, 200]
    assert state_of(policy) is State.CLOSED


def test_route_policy_named_like_the_guard_counts_each_search_once(db: None, faults: Faults) -> None:
    """A "search" policy on the search route is also the guard's: one request is one call, one trial."""
    policy = make_breaker(
        name="search",
        match_type="prefix",
        pattern="/api/books/search",
        failure_statuses="500-599",
        failure_threshold=2,
        half_open_max_calls=1,
    )
    faults.set("search", "error")
    client = APIClient()

    assert_dependency_failed(client.get(SEARCH))
    assert state_of(policy) is State.CLOSED  # one failure of two
    assert_dependency_failed(client.get(SEARCH))
    assert state_of(policy) is State.OPEN

    faults.clear("search")
    trip_long_ago(policy)
    trial = client.get(SEARCH)

    assert trial.status_code == 200
    assert trial["X-Circuit-Breaker-State"] == "half-open"
    assert state_of(policy) is State.CLOSED


def test_search_client_errors_do_not_trip_the_search_breaker(db: None, faults: Faults) -> None:
    """A page past the end is the client's mistake (404), not a failing search."""
    policy = make_breaker(name="search", match_type="code", failure_statuses="500-599", failure_threshold=2)

    past_the_end = [APIClient().get(SEARCH + "&page=999").status_code for _ in range(3)]

    assert past_the_end == [404, 404, 404]
    assert state_of(policy) is State.CLOSED
    assert APIClient().get(SEARCH).status_code == 200


@pytest.mark.parametrize("enabled", [None, False])
def test_search_guard_without_an_enabled_policy_lets_everything_through(
    db: None, faults: Faults, enabled: bool | None
) -> None:
    if enabled is not None:
        make_breaker(name="search", match_type="code", failure_statuses="500-599", failure_threshold=1, enabled=False)
    faults.set("search", "error")

    responses = [APIClient().get(SEARCH) for _ in range(4)]

    for response in responses:
        assert_dependency_failed(response)
    assert faults.calls("search") == 4


def test_unknown_breaker_name_guards_nothing(db: None) -> None:
    ran = []

    @breaker("no-such-breaker")
    def failing() -> None:
        ran.append(1)
        raise RuntimeError("boom")

    for _ in range(3):
        with pytest.raises(RuntimeError):
            failing()
    assert len(ran) == 3


@pytest.mark.parametrize(
    ("error", "counts"),
    [(Http404, False), (NotFound, False), (ValidationError, False), (DependencyFailed, True), (KeyError, True)],
)
def test_guard_counts_server_errors_not_client_errors(db: None, error: type[Exception], counts: bool) -> None:
    policy = make_breaker(match_type="code", failure_statuses="500-599", failure_threshold=2)

    def call() -> None:
        with breaker(policy.name):
            raise error()

    for _ in range(2):
        with pytest.raises(error):
            call()

    assert state_of(policy) is (State.OPEN if counts else State.CLOSED)


# --- stale fallback ----------------------------------------------------------------------------------


def test_stale_fallback_serves_the_last_good_get_while_open(db: None, make_book: Callable[..., Book]) -> None:
    policy = make_breaker(failure_threshold=2, fallback="stale")
    kept, unseen = make_book(), make_book()
    client = APIClient()
    good = client.get(f"/api/books/{kept.pk}")
    assert good.status_code == 200
    for _ in range(2):
        assert client.get(MISSING).status_code == 404
    assert state_of(policy) is State.OPEN

    stale = client.get(f"/api/books/{kept.pk}")
    never_seen = client.get(f"/api/books/{unseen.pk}")
    posted = client.post(f"/api/books/{kept.pk}", {}, format="json")

    assert stale.status_code == 200
    assert stale.content == good.content
    assert stale["Content-Type"] == good["Content-Type"]
    assert stale["X-Stale-Response"].startswith(f"breaker={policy.name}")
    assert 0 <= int(stale["Age"]) <= 5
    assert stale["X-Circuit-Breaker-State"] == "open"
    assert_open_problem(never_seen, policy.open_seconds)
    assert_open_problem(posted, policy.open_seconds)


def test_error_fallback_never_serves_stale(db: None, make_book: Callable[..., Book]) -> None:
    policy = make_breaker(failure_threshold=1, fallback="error")
    book = make_book()
    client = APIClient()
    assert client.get(f"/api/books/{book.pk}").status_code == 200
    assert client.get(MISSING).status_code == 404

    response = client.get(f"/api/books/{book.pk}")

    assert_open_problem(response, policy.open_seconds)
    assert "X-Stale-Response" not in response


# --- transitions: signal, metrics, rejections --------------------------------------------------------


def test_transitions_send_the_signal_and_count(db: None) -> None:
    policy = make_breaker(failure_threshold=2)
    seen: list[dict[str, Any]] = []

    def receiver(sender: object, **kwargs: Any) -> None:
        seen.append(kwargs)

    breaker_state_changed.connect(receiver)
    try:
        opened_before = transitions(policy.name, "closed", "open")
        rejected_before = rejections(policy.name)
        client = APIClient()
        for _ in range(2):
            client.get(MISSING)
        for _ in range(3):
            assert client.get(MISSING).status_code == 503
        call_command("breakers", "reset", policy.name, stdout=StringIO())
    finally:
        breaker_state_changed.disconnect(receiver)

    mine = [(s["name"], s["from_state"], s["to_state"]) for s in seen if s["name"] == policy.name]
    assert mine == [
        (policy.name, State.CLOSED, State.OPEN),
        (policy.name, State.OPEN, State.CLOSED),
    ]
    assert transitions(policy.name, "closed", "open") - opened_before == 1
    assert transitions(policy.name, "open", "closed") >= 1
    assert rejections(policy.name) - rejected_before == 3
    exposition = APIClient().get("/metrics").content.decode()
    assert (
        f'bookstore_breaker_transitions_total{{breaker="{policy.name}",from_state="closed",to_state="open"}} 1.0'
        in exposition
    )
    assert f'bookstore_breaker_rejections_total{{breaker="{policy.name}"}} 3.0' in exposition


# --- Redis unreachable: every worker still protects itself --------------------------------------------


@pytest.fixture
def dead_redis() -> Iterator[Runtime]:
    """Give this process a runtime whose shared stores point at a Redis nobody listens on."""
    reset_runtime()
    runtime = get_runtime()
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    assert isinstance(runtime.shared, RedisLimiterStore)
    runtime.shared = RedisLimiterStore(client, version_key=runtime.shared.version_key)
    runtime.breaker_shared = RedisBreakerStore(client, prefix=runtime.breaker_shared.prefix)  # type: ignore[attr-defined]  # the Redis store here
    yield runtime
    reset_runtime()  # drops the per-process breaker state this test built up


def test_redis_down_route_breaker_still_trips_in_process(
    db: None, dead_redis: Runtime, make_book: Callable[..., Book]
) -> None:
    policy = make_breaker(failure_threshold=3, fallback="stale")
    book = make_book()
    errors_before = sum(metrics.store_errors.labels(op)._value.get() for op in ("admit", "version"))
    client = APIClient()

    responses = [client.get(f"/api/books/{book.pk}")] + [client.get(MISSING) for _ in range(3)]
    refused = [client.get(f"/api/books/{book.pk}") for _ in range(2)]

    assert [r.status_code for r in responses] == [200, 404, 404, 404]
    for response in refused:  # no stale copy without Redis: the designed 503
        assert_open_problem(response, policy.open_seconds)
    assert not dead_redis.store_available()
    assert sum(metrics.store_errors.labels(op)._value.get() for op in ("admit", "version")) > errors_before
    health = client.get("/health/breakers")
    assert health.status_code == 200
    [row] = [row for row in health.json()["breakers"] if row["name"] == policy.name]
    assert (row["state"], row["store"]) == ("open", "process")


def test_redis_down_search_guard_still_trips_in_process(db: None, faults: Faults, dead_redis: Runtime) -> None:
    make_breaker(name="search", match_type="code", failure_statuses="500-599", failure_threshold=2)
    faults.set("search", "error")  # faults live in the cache, which this test leaves reachable
    client = APIClient()

    failed = [client.get(SEARCH) for _ in range(2)]
    refused = [client.get(SEARCH) for _ in range(3)]

    for response in failed:
        assert_dependency_failed(response)
    for response in refused:
        assert_open_problem(response, 30)
    assert faults.calls("search") == 2
