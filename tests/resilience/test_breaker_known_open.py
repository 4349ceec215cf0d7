"""A worker refuses calls to a breaker it saw open without asking Redis, and hears at once when that changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rest_framework.test import APIClient

from catalog.models import Book
from resilience.engine.breaker import State
from resilience.http.guards import BreakerOpen, breaker
from resilience.models import CircuitBreakerPolicy
from resilience.ops import metrics
from resilience.runtime import Runtime, get_runtime, reset_runtime
from resilience.runtime.refusals import KnownRefusals
from resilience.stores.redis_breaker import RedisBreakerStore
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.resilience.test_breaker_middleware import MISSING, assert_open_problem, make_breaker, rejections

pytestmark = pytest.mark.usefixtures("fresh_runtime")


class RoundTrips:
    """Count the admission round trips this process makes to Redis."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> None:
        self.count = 0
        admit = runtime.admit

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return admit(*args, **kwargs)

        monkeypatch.setattr(runtime, "admit", counted)


def within(seconds: float, condition: Callable[[], bool]) -> float:
    """Wait until condition() holds; return how long that took, or fail after ``seconds``."""
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < seconds, "not within the time allowed"
        time.sleep(0.001)
    return time.perf_counter() - start


def known() -> KnownRefusals:
    remembered = get_runtime().known_refusals()
    assert remembered is not None
    return remembered


def opened(make_book: Callable[..., Book], **fields: Any) -> tuple[CircuitBreakerPolicy, str, APIClient]:
    """Trip a breaker on book pages and let this process see it open; return it, a page it guards, a client."""
    policy = make_breaker(failure_threshold=1, **fields)
    page = f"/api/books/{make_book().pk}"
    client = APIClient()
    assert client.get(MISSING).status_code == 404  # trips it
    # The first refusal starts the subscription; the first answer after it is remembered.
    assert client.get(page).status_code == 503
    within(10, known().live)
    assert client.get(page).status_code == 503
    assert known().seconds_left(policy.name) is not None
    return policy, page, client


def heard(name: str) -> None:
    """Wait until this process has heard a change that makes it forget ``name``.

    Only a message on the channel makes it forget sooner than the 30 s open period the tests use,
    so forgetting within this generous deadline is proof the change was heard, however loaded the machine.
    """
    within(10, lambda: known().seconds_left(name) is None)


def test_calls_to_a_breaker_seen_open_are_refused_without_a_round_trip(
    make_book: Callable[..., Book], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, page, client = opened(make_book, open_seconds=30)
    trips = RoundTrips(monkeypatch, get_runtime())
    before = rejections(policy.name)

    refused = [client.get(page) for _ in range(20)]

    assert trips.count == 0
    assert all(28 <= assert_open_problem(r, 30) <= 30 for r in refused)
    assert all('desc="refused"' in r["Server-Timing"] for r in refused)
    assert rejections(policy.name) - before == 20


def test_reset_from_another_process_is_heard_at_once(
    make_book: Callable[..., Book], other: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, page, client = opened(make_book, open_seconds=30)
    trips = RoundTrips(monkeypatch, get_runtime())

    RedisBreakerStore(other, prefix=get_runtime().breaker_shared.prefix).reset(policy.name)  # type: ignore[attr-defined]  # the Redis store here
    heard(policy.name)
    served = client.get(page)

    assert served.status_code == 200
    assert served["X-Circuit-Breaker-State"] == "closed"
    assert trips.count == 1


def test_forced_close_from_another_process_is_heard_at_once(make_book: Callable[..., Book], other: redis.Redis) -> None:
    policy, page, client = opened(make_book, open_seconds=30)

    store = RedisBreakerStore(other, prefix=get_runtime().breaker_shared.prefix)  # type: ignore[attr-defined]  # the Redis store here
    store.force(policy.name, State.FORCED_CLOSED)
    heard(policy.name)

    assert client.get(page).status_code == 200
    store.force(policy.name, None)


def test_forced_open_is_refused_without_a_round_trip_until_released(
    make_book: Callable[..., Book], other: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = make_breaker(failure_threshold=5, open_seconds=30)
    page = f"/api/books/{make_book().pk}"
    client = APIClient()
    store = RedisBreakerStore(other, prefix=get_runtime().breaker_shared.prefix)  # type: ignore[attr-defined]  # the Redis store here
    store.force(policy.name, State.FORCED_OPEN)
    assert client.get(page).status_code == 503
    within(10, known().live)
    assert client.get(page).status_code == 503
    trips = RoundTrips(monkeypatch, get_runtime())

    assert [client.get(page).status_code for _ in range(5)] == [503] * 5
    assert trips.count == 0

    store.force(policy.name, None)
    heard(policy.name)
    assert client.get(page).status_code == 200


def test_policy_change_published_by_another_process_is_heard_at_once(
    make_book: Callable[..., Book], other: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, page, client = opened(make_book, open_seconds=30)
    runtime = get_runtime()
    assert isinstance(runtime.shared, RedisLimiterStore)
    # Only the announcement can tell this process: it would not look at the version for a minute.
    monkeypatch.setattr("resilience.runtime.VERSION_CHECK_INTERVAL", 60.0)

    # Staff disable the breaker on another instance: the row changes, then the version is bumped.
    CircuitBreakerPolicy.objects.filter(pk=policy.pk).update(enabled=False)
    RedisLimiterStore(other, runtime.shared.version_key, runtime.shared.events_channel).bump_version()
    heard(policy.name)

    # As when every call asked Redis: the next one learns the new version, the one after obeys it.
    client.get(page)
    assert client.get(page).status_code == 200


def test_open_period_end_is_kept_to_the_second(make_book: Callable[..., Book]) -> None:
    _, page, client = opened(make_book, open_seconds=1)

    time.sleep(1.05)
    trial = client.get(page)

    assert trial.status_code == 200  # a half-open trial, and its success closes the breaker
    assert client.get(page)["X-Circuit-Breaker-State"] == "closed"


def test_lost_subscription_sends_every_call_back_to_redis(
    make_book: Callable[..., Book], other: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, page, client = opened(make_book, open_seconds=30)
    runtime = get_runtime()

    # The subscription dies, and the breaker is then closed in a way nobody announces.
    assert other.client_kill_filter(_type="pubsub") >= 1
    heard(policy.name)
    other.delete(*runtime.breaker_shared.keys_for(policy.name))  # type: ignore[attr-defined]  # the Redis store here
    trips = RoundTrips(monkeypatch, runtime)

    assert client.get(page).status_code == 200
    assert trips.count == 1


def test_listener_subscribes_again_after_a_lost_connection(
    make_book: Callable[..., Book], other: redis.Redis, settings: Any
) -> None:
    policy, page, client = opened(make_book, open_seconds=30)
    errors = metrics.store_errors.labels("subscribe")._value.get()
    assert other.client_kill_filter(_type="pubsub") >= 1
    heard(policy.name)
    within(10, lambda: metrics.store_errors.labels("subscribe")._value.get() == errors + 1)  # counted, for alerts

    # Back within the retry interval: the breaker is still open, and is remembered again.
    within(settings.RESILIENCE_STORE_RETRY_SECONDS + 2, known().live)
    assert client.get(page).status_code == 503
    assert known().seconds_left(policy.name) is not None


def test_reconnects_take_no_connection_from_the_pool_requests_use(
    make_book: Callable[..., Book], other: redis.Redis, settings: Any
) -> None:
    """Outages come and go; every reconnect of the listener must leave the request pool as it was."""
    policy, page, client = opened(make_book, open_seconds=30)
    pool = get_runtime().shared.client.connection_pool  # type: ignore[attr-defined]  # the Redis store here
    made = pool._created_connections

    channel = known().channel

    def subscribed() -> bool:
        # Redis's own count too: live() may still hold for a moment after a kill the listener has not read yet.
        return known().live() and int(dict(other.pubsub_numsub(channel))[channel.encode()]) >= 1

    for _ in range(3):
        assert other.client_kill_filter(_type="pubsub") >= 1
        heard(policy.name)
        within(settings.RESILIENCE_STORE_RETRY_SECONDS + 2, subscribed)

    assert pool._created_connections == made
    assert client.get(page).status_code == 503


def test_a_dropped_runtime_lets_go_of_its_subscription(make_book: Callable[..., Book], other: redis.Redis) -> None:
    """A runtime replaced by a new one (settings changed, tests) closes its subscription instead of keeping it."""
    channel = known().channel
    _, page, client = opened(make_book, open_seconds=30)

    def subscribers() -> int:
        return int(dict(other.pubsub_numsub(channel))[channel.encode()])

    assert subscribers() == 1
    dropped = known()
    reset_runtime()

    within(10, lambda: subscribers() == 0)
    assert not dropped.live()
    assert client.get(page).status_code == 503
    within(10, known().live)  # the runtime that replaced it subscribes on its own
    assert subscribers() == 1


def test_without_a_subscription_every_call_asks_redis(
    make_book: Callable[..., Book], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = make_breaker(failure_threshold=1, open_seconds=30)
    page = f"/api/books/{make_book().pk}"
    client = APIClient()
    runtime = get_runtime()

    attempts: list[float] = []

    def refused() -> Any:
        attempts.append(time.perf_counter())
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(known().subscription, "_connect", refused)
    assert client.get(MISSING).status_code == 404
    trips = RoundTrips(monkeypatch, runtime)

    assert [client.get(page).status_code for _ in range(4)] == [503] * 4
    within(10, lambda: bool(attempts))  # the listener tried to subscribe, and could not
    assert client.get(page).status_code == 503
    assert trips.count == 5  # nothing is remembered that no subscription could take back
    assert not known().live()
    assert known().seconds_left(policy.name) is None


def test_code_guard_refuses_from_memory_too(monkeypatch: pytest.MonkeyPatch) -> None:
    make_breaker(name="guarded", match_type="code", failure_statuses="500-599", failure_threshold=1, open_seconds=30)

    def call() -> None:
        with breaker("guarded"):
            pass

    with pytest.raises(RuntimeError), breaker("guarded"):
        raise RuntimeError("the dependency failed")  # trips it
    with pytest.raises(BreakerOpen):
        call()
    within(10, known().live)
    with pytest.raises(BreakerOpen):
        call()
    store = get_runtime().breaker_shared
    asked = []
    monkeypatch.setattr(store, "allow", lambda *a, **k: asked.append(a) or pytest.fail("asked Redis"))

    for _ in range(5):
        with pytest.raises(BreakerOpen) as refused:
            call()
        assert 28 <= refused.value.retry_after <= 30
    assert asked == []
