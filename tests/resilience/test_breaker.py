"""Test the breaker engine against the in-process and the Redis store alike."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from resilience.engine.breaker import (
    BreakerConfig,
    Permit,
    State,
    StoreUnavailable,
    Transition,
    ready_to_trip,
    trial_lease_seconds,
)
from resilience.stores.memory_breaker import MemoryBreakerStore
from resilience.stores.redis_breaker import RedisBreakerStore

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# A fixed fake clock: every call passes `now`, so nothing here sleeps or reads the wall clock.
T0 = 1_000_000.0

Store = MemoryBreakerStore | RedisBreakerStore


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis not reachable at {REDIS_URL}: {e}")
    yield client
    client.close()


@pytest.fixture
def redis_store(redis_client: redis.Redis) -> Iterator[RedisBreakerStore]:
    store = RedisBreakerStore(redis_client)
    used: list[str] = []
    original = store.keys_for

    def tracking_keys_for(name: str) -> list[str]:
        keys = original(name)
        used.extend(keys)
        return keys

    store.keys_for = tracking_keys_for  # type: ignore[method-assign]  # a spy
    yield store
    # Other runs share this DB: delete only what this test touched, never flush.
    if used:
        redis_client.delete(*set(used))


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryBreakerStore(clock=lambda: T0)
    return request.getfixturevalue("redis_store")


@pytest.fixture
def make_cfg() -> Callable[..., BreakerConfig]:
    def make(**overrides: Any) -> BreakerConfig:
        return BreakerConfig(name=f"test-{uuid.uuid4().hex}", **overrides)

    return make


def fail_times(store: Store, cfg: BreakerConfig, n: int, now: float) -> list[Transition]:
    transitions: list[Transition] = []
    for _ in range(n):
        permit, moved = store.allow(cfg, now)
        assert permit.allowed
        _, recorded = store.record(cfg, permit.generation, False, now)
        transitions += moved + recorded
    return transitions


def trip(store: Store, cfg: BreakerConfig, now: float) -> None:
    fail_times(store, cfg, cfg.failure_threshold, now)
    assert store.snapshot(cfg, now).state is State.OPEN


# --- pure rules ------------------------------------------------------------------------------------


def test_ready_to_trip_applies_either_rule() -> None:
    cfg = BreakerConfig(name="x", failure_threshold=3, failure_rate=50, window_size=10, minimum_calls=4)
    assert ready_to_trip(cfg, 3, 0, 0)
    assert not ready_to_trip(cfg, 2, 3, 3)  # rate rule waits for minimum_calls
    assert ready_to_trip(cfg, 0, 4, 2)  # 50 % at the minimum
    assert not ready_to_trip(cfg, 0, 5, 2)
    off = cfg._replace(failure_threshold=0, failure_rate=0)
    assert not ready_to_trip(off, 100, 100, 100)


def test_ready_to_trip_caps_minimum_calls_at_count_window_size() -> None:
    cfg = BreakerConfig(name="x", failure_threshold=0, failure_rate=50, window_size=4, minimum_calls=10)
    assert ready_to_trip(cfg, 0, 4, 2)
    assert not ready_to_trip(cfg._replace(window_kind="time"), 0, 4, 2)


def test_trial_lease_has_a_floor() -> None:
    assert trial_lease_seconds(BreakerConfig(name="x", open_seconds=1)) == 10.0
    assert trial_lease_seconds(BreakerConfig(name="x", open_seconds=60)) == 60.0


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": ""},
        {"failure_threshold": -1},
        {"failure_rate": 101},
        {"failure_rate": float("nan")},
        {"window_size": 0},
        {"window_kind": "calls"},
        {"minimum_calls": -1},
        {"open_seconds": 0},
        {"open_seconds": float("inf")},
        {"half_open_max_calls": 0},
    ],
)
def test_config_validate_rejects_out_of_range(overrides: dict[str, object]) -> None:
    cfg = BreakerConfig(name="x")._replace(**overrides)
    with pytest.raises(ValueError, match=next(iter(overrides))):
        cfg.validate()


# --- both stores -------------------------------------------------------------------------------------


def test_it_trips_after_consecutive_failures(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=3, open_seconds=30)
    assert fail_times(store, cfg, 2, T0) == []
    assert store.snapshot(cfg, T0).consecutive_failures == 2
    moved = fail_times(store, cfg, 1, T0 + 1)
    assert moved == [Transition(cfg.name, State.CLOSED, State.OPEN, 1, T0 + 1)]
    permit, _ = store.allow(cfg, T0 + 2)
    assert permit == Permit(False, State.OPEN, 1, 29.0, False)
    snap = store.snapshot(cfg, T0 + 2)
    assert (snap.state, snap.opened_at, snap.retry_after, snap.consecutive_failures) == (
        State.OPEN,
        T0 + 1,
        29.0,
        0,
    )


def test_it_resets_consecutive_count_on_success(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=3)
    fail_times(store, cfg, 2, T0)
    store.record(cfg, 0, True, T0)
    assert store.snapshot(cfg, T0).consecutive_failures == 0
    fail_times(store, cfg, 2, T0)
    assert store.snapshot(cfg, T0).state is State.CLOSED


def test_it_trips_on_failure_rate_over_count_window(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=0, failure_rate=60, window_size=6, minimum_calls=4)
    for success in (False, False, True):  # 67 % failures, but only 3 calls: below the minimum
        assert store.record(cfg, 0, success, T0)[0] is State.CLOSED
    for _ in range(6):  # successes push the old failures out of the window
        assert store.record(cfg, 0, True, T0)[0] is State.CLOSED
    snap = store.snapshot(cfg, T0)
    assert (snap.window_calls, snap.window_failures) == (6, 0)
    for _ in range(3):
        assert store.record(cfg, 0, False, T0)[0] is State.CLOSED  # up to 3 of 6 = 50 %
    state, moved = store.record(cfg, 0, False, T0)  # 4 of 6 = 67 %
    assert state is State.OPEN
    assert [(t.from_state, t.to_state) for t in moved] == [(State.CLOSED, State.OPEN)]


def test_it_trips_on_failure_rate_over_time_window(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=0, failure_rate=60, window_size=10, window_kind="time", minimum_calls=3)
    store.record(cfg, 0, False, T0)
    store.record(cfg, 0, False, T0 + 1)
    assert store.snapshot(cfg, T0 + 1)[4:6] == (2, 2)
    # Ten seconds on, the first failure has left the window: 1 failure + 2 successes = 33 %.
    store.record(cfg, 0, True, T0 + 10)
    store.record(cfg, 0, True, T0 + 10.5)
    snap = store.snapshot(cfg, T0 + 10.5)
    assert (snap.window_calls, snap.window_failures, snap.state) == (3, 1, State.CLOSED)
    # Read-only view ages the window too, without writing.
    assert store.snapshot(cfg, T0 + 11)[4:6] == (2, 0)
    assert store.snapshot(cfg, T0 + 100)[4:6] == (0, 0)
    for _ in range(2):
        store.record(cfg, 0, False, T0 + 11)
    assert store.snapshot(cfg, T0 + 11).state is State.CLOSED  # 2 of 4 = 50 %
    assert store.record(cfg, 0, False, T0 + 11.9)[0] is State.OPEN  # 3 of 5 = 60 %


def test_time_window_forgets_everything_after_a_long_gap(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=0, failure_rate=50, window_size=5, window_kind="time", minimum_calls=2)
    store.record(cfg, 0, False, T0)
    store.record(cfg, 0, True, T0 + 1000)
    assert store.snapshot(cfg, T0 + 1000)[4:6] == (1, 0)


def test_window_layout_change_starts_counting_afresh(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=0, failure_rate=50, window_size=10, minimum_calls=4)
    for _ in range(3):
        store.record(cfg, 0, False, T0)
    as_time = cfg._replace(window_kind="time")
    assert store.snapshot(as_time, T0)[4:6] == (0, 0)
    assert store.record(as_time, 0, False, T0)[0] is State.CLOSED
    assert store.snapshot(as_time, T0)[4:6] == (1, 1)


def test_open_turns_half_open_after_open_seconds(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=1, open_seconds=30)
    trip(store, cfg, T0)
    assert store.allow(cfg, T0 + 10)[0].retry_after == 20.0
    assert store.allow(cfg, T0 + 29.5)[0].retry_after == 0.5
    # The snapshot reports half-open read-only: the transition is still returned by the next allow.
    snap = store.snapshot(cfg, T0 + 30)
    assert (snap.state, snap.generation, snap.retry_after) == (State.HALF_OPEN, 2, 0.0)
    permit, moved = store.allow(cfg, T0 + 30)
    assert permit == Permit(True, State.HALF_OPEN, 2, 0.0, True)
    assert moved == [Transition(cfg.name, State.OPEN, State.HALF_OPEN, 2, T0 + 30)]
    assert store.allow(cfg, T0 + 31)[1] == []  # the transition is reported once


def test_half_open_admits_exactly_k(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=1, open_seconds=30, half_open_max_calls=3)
    trip(store, cfg, T0)
    permits = [store.allow(cfg, T0 + 30 + i)[0] for i in range(5)]
    assert [p.allowed for p in permits] == [True, True, True, False, False]
    assert all(p.trial for p in permits[:3])
    # Rejected half-open calls are told when the trial lease runs out (it started with the first trial).
    assert permits[3].retry_after == T0 + 30 + trial_lease_seconds(cfg) - (T0 + 33)
    assert store.snapshot(cfg, T0 + 35).retry_after == permits[4].retry_after - 1


def test_half_open_admits_exactly_k_under_concurrency(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=1, open_seconds=30, half_open_max_calls=3)
    trip(store, cfg, T0)
    barrier = threading.Barrier(64)
    results: list[tuple[Permit, list[Transition]]] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        result = store.allow(cfg, T0 + 30)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=call) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 64
    assert sum(permit.allowed for permit, _ in results) == 3
    assert sum(len(moved) for _, moved in results) == 1  # one worker applied OPEN -> HALF_OPEN


def test_k_successes_close(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=1, open_seconds=30, half_open_max_calls=2)
    trip(store, cfg, T0)
    first, _ = store.allow(cfg, T0 + 30)
    second, _ = store.allow(cfg, T0 + 30)
    assert store.record(cfg, first.generation, True, T0 + 31) == (State.HALF_OPEN, [])
    state, moved = store.record(cfg, second.generation, True, T0 + 32)
    assert state is State.CLOSED
    assert moved == [Transition(cfg.name, State.HALF_OPEN, State.CLOSED, 3, T0 + 32)]
    snap = store.snapshot(cfg, T0 + 32)
    assert (snap.generation, snap.consecutive_failures, snap.window_calls, snap.opened_at) == (3, 0, 0, None)
    assert store.allow(cfg, T0 + 33)[0] == Permit(True, State.CLOSED, 3, 0.0, False)


def test_failure_in_half_open_reopens_with_fresh_period(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=1, open_seconds=30, half_open_max_calls=2)
    trip(store, cfg, T0)
    first, _ = store.allow(cfg, T0 + 30)
    store.allow(cfg, T0 + 30)
    store.record(cfg, first.generation, True, T0 + 31)
    state, moved = store.record(cfg, first.generation, False, T0 + 40)
    assert state is State.OPEN
    assert moved == [Transition(cfg.name, State.HALF_OPEN, State.OPEN, 3, T0 + 40)]
    permit, _ = store.allow(cfg, T0 + 41)
    assert (permit.allowed, permit.retry_after) == (False, 29.0)
    assert store.snapshot(cfg, T0 + 41).opened_at == T0 + 40
    assert store.allow(cfg, T0 + 70)[0].trial


def test_stale_generation_outcome_is_ignored(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=2, open_seconds=30)
    slow, _ = store.allow(cfg, T0)  # admitted while closed, reports after the breaker moved on
    trip(store, cfg, T0)
    trial, _ = store.allow(cfg, T0 + 30)
    # A late failure from the closed generation must not re-open the half-open breaker.
    assert store.record(cfg, slow.generation, False, T0 + 31) == (State.HALF_OPEN, [])
    assert store.record(cfg, trial.generation, True, T0 + 31)[0] is State.CLOSED
    # Nor count against the fresh closed generation.
    store.record(cfg, slow.generation, False, T0 + 32)
    assert store.snapshot(cfg, T0 + 32).consecutive_failures == 0


def test_forced_states_hold_until_released(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=1, open_seconds=30)
    moved = store.force(cfg.name, State.FORCED_OPEN, T0)
    assert moved == [Transition(cfg.name, State.CLOSED, State.FORCED_OPEN, 1, T0)]
    assert store.force(cfg.name, State.FORCED_OPEN, T0) == []
    permit, _ = store.allow(cfg, T0 + 10_000)
    assert permit == Permit(False, State.FORCED_OPEN, 1, 30.0, False)
    snap = store.snapshot(cfg, T0 + 10_000)
    assert (snap.state, snap.forced) == (State.FORCED_OPEN, True)

    store.force(cfg.name, State.FORCED_CLOSED, T0 + 1)
    fail_times(store, cfg, 5, T0 + 2)  # failures do not trip a forced-closed breaker
    assert store.allow(cfg, T0 + 3)[0] == Permit(True, State.FORCED_CLOSED, 2, 0.0, False)

    assert store.force(cfg.name, None, T0 + 4) == [Transition(cfg.name, State.FORCED_CLOSED, State.CLOSED, 3, T0 + 4)]
    assert store.force(cfg.name, None, T0 + 5) == []  # releasing a free breaker changes nothing
    assert store.snapshot(cfg, T0 + 5).forced is False
    with pytest.raises(ValueError, match="force"):
        store.force(cfg.name, State.OPEN, T0)


def test_release_does_not_close_a_tripped_breaker(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=1)
    trip(store, cfg, T0)
    assert store.force(cfg.name, None, T0) == []
    assert store.snapshot(cfg, T0).state is State.OPEN


def test_reset_closes_and_bumps_generation(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=2)
    trip(store, cfg, T0)
    assert store.reset(cfg.name, T0 + 1) == [Transition(cfg.name, State.OPEN, State.CLOSED, 2, T0 + 1)]
    assert store.allow(cfg, T0 + 1)[0] == Permit(True, State.CLOSED, 2, 0.0, False)
    fail_times(store, cfg, 1, T0 + 1)
    assert store.reset(cfg.name, T0 + 2) == []  # already closed: counters cleared, no transition
    snap = store.snapshot(cfg, T0 + 2)
    assert (snap.state, snap.generation, snap.consecutive_failures, snap.window_calls) == (
        State.CLOSED,
        3,
        0,
        0,
    )
    store.force(cfg.name, State.FORCED_OPEN, T0 + 3)
    assert store.reset(cfg.name, T0 + 4)[0].from_state is State.FORCED_OPEN


def test_abandoned_trial_slots_expire(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=1, open_seconds=30, half_open_max_calls=1)
    lease = trial_lease_seconds(cfg)
    trip(store, cfg, T0)
    lost, _ = store.allow(cfg, T0 + 30)  # its worker dies and never reports
    assert not store.allow(cfg, T0 + 30 + lease - 0.001)[0].allowed
    retry, _ = store.allow(cfg, T0 + 30 + lease)
    assert (retry.allowed, retry.trial, retry.generation) == (True, True, lost.generation + 1)
    assert not store.allow(cfg, T0 + 30 + lease + 1)[0].allowed
    # The abandoned call's late outcome belongs to the expired batch and is ignored.
    assert store.record(cfg, lost.generation, False, T0 + 30 + lease + 2) == (State.HALF_OPEN, [])
    assert store.record(cfg, retry.generation, True, T0 + 30 + lease + 2)[0] is State.CLOSED


def test_snapshots_keep_order(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    first, second = make_cfg(failure_threshold=1), make_cfg()
    trip(store, first, T0)
    assert [s.state for s in store.snapshots([first, second], T0)] == [State.OPEN, State.CLOSED]
    assert [s.name for s in store.snapshots([second, first], T0)] == [second.name, first.name]
    assert store.snapshots([], T0) == []


def test_store_clock_is_used_without_now(store: Store, make_cfg: Callable[..., BreakerConfig]) -> None:
    cfg = make_cfg(failure_threshold=1, open_seconds=30)
    permit, _ = store.allow(cfg)
    _, moved = store.record(cfg, permit.generation, False)
    assert moved[0].to_state is State.OPEN
    assert 0 < store.snapshot(cfg).retry_after <= 30


# --- Redis only ----------------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_keys_carry_hash_tag_and_ttls(
    redis_store: RedisBreakerStore, redis_client: redis.Redis, make_cfg: Callable[..., BreakerConfig]
) -> None:
    cfg = make_cfg(failure_threshold=2, open_seconds=5000)
    key, window_key = redis_store.keys_for(cfg.name)
    assert (key, window_key) == (f"cb:{{{cfg.name}}}", f"cb:{{{cfg.name}}}:w")
    redis_store.allow(cfg, T0)
    assert not redis_client.exists(key)  # admitting a closed breaker writes nothing
    redis_store.record(cfg, 0, True, T0)
    assert 0 < redis_client.ttl(key) <= 3600
    redis_store.record(cfg, 0, False, T0)
    assert 3600 < redis_client.ttl(key) <= 86400
    assert redis_client.ttl(window_key) > 3600
    redis_store.record(cfg, 0, False, T0)
    assert redis_client.ttl(key) > 86400 + 4000  # OPEN outlives its open period
    assert not redis_client.exists(window_key)
    redis_store.force(cfg.name, State.FORCED_OPEN, T0)
    assert redis_client.ttl(key) == -1  # operator's decision never expires


@pytest.mark.redis
def test_redis_store_matches_memory_store_step_for_step(
    redis_store: RedisBreakerStore, make_cfg: Callable[..., BreakerConfig]
) -> None:
    rng = random.Random(20240611)
    memory = MemoryBreakerStore(clock=lambda: T0)
    configs = [
        make_cfg(failure_threshold=3, open_seconds=5, half_open_max_calls=2),
        make_cfg(failure_threshold=0, failure_rate=40, window_size=8, minimum_calls=5, open_seconds=3),
        make_cfg(
            failure_threshold=4,
            failure_rate=50,
            window_size=6,
            window_kind="time",
            minimum_calls=3,
            open_seconds=12,
            half_open_max_calls=3,
        ),
    ]
    now = T0
    generations: dict[str, list[int]] = {cfg.name: [0] for cfg in configs}
    for _ in range(1500):
        cfg = rng.choice(configs)
        now += rng.choice([0.0, 0.1, 0.7, 1.0, 2.5, 9.0])
        op = rng.random()
        if op < 0.45:
            got = [store.allow(cfg, now) for store in (memory, redis_store)]
            if got[0][0].allowed:
                generations[cfg.name].append(got[0][0].generation)
        elif op < 0.92:
            gen = rng.choice(generations[cfg.name][-3:])
            success = rng.random() < 0.4
            got = [store.record(cfg, gen, success, now) for store in (memory, redis_store)]
        elif op < 0.95:
            target = rng.choice([State.FORCED_OPEN, State.FORCED_CLOSED, None])
            got = [store.force(cfg.name, target, now) for store in (memory, redis_store)]
        elif op < 0.97:
            got = [store.reset(cfg.name, now) for store in (memory, redis_store)]
        else:
            got = [store.snapshot(cfg, now) for store in (memory, redis_store)]
        assert got[0] == got[1]
        assert memory.snapshot(cfg, now) == redis_store.snapshot(cfg, now)


def test_a_batch_of_successes_counts_as_those_successes_recorded_one_by_one(
    redis_store: RedisBreakerStore, make_cfg: Callable[..., BreakerConfig]
) -> None:
    """Successes of a closed breaker reach Redis in batches (runtime/outcomes.py): the breaker must not tell."""
    rng = random.Random(20261203)
    memory = MemoryBreakerStore(clock=lambda: T0)
    configs = [
        make_cfg(failure_threshold=3, open_seconds=5, half_open_max_calls=2),
        make_cfg(failure_threshold=0, failure_rate=50, window_size=6, minimum_calls=4, open_seconds=3),
        make_cfg(failure_threshold=0, failure_rate=40, window_size=5, window_kind="time", minimum_calls=3),
    ]
    now = T0
    trips = 0
    for _ in range(800):
        cfg = rng.choice(configs)
        now += rng.choice([0.0, 0.0, 0.4, 1.0, 3.0])
        permit, _ = memory.allow(cfg, now)
        assert redis_store.allow(cfg, now)[0] == permit
        if not permit.allowed:
            continue
        earlier = rng.choice([0, 1, 2, 7, 40]) if permit.state is State.CLOSED else 0
        outcome = rng.choice([True, False, False, None])
        expected: list[Transition] = []
        for _ in range(earlier):
            expected += memory.record(cfg, permit.generation, True, now)[1]
        if outcome is not None:
            expected += memory.record(cfg, permit.generation, outcome, now)[1]
        got = redis_store.record(cfg, permit.generation, outcome, now, earlier=earlier)[1]
        assert got == expected
        trips += sum(t.to_state is State.OPEN for t in got)
        assert redis_store.snapshot(cfg, now) == memory.snapshot(cfg, now)
    assert trips >= 10, "the sequence must exercise trips, not only successes"


@pytest.mark.redis
def test_dead_redis_raises_store_unavailable_quickly(make_cfg: Callable[..., BreakerConfig]) -> None:
    # Retries off, as the app's client should be: every operation fails at once.
    client = redis.Redis(port=1, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    store = RedisBreakerStore(client)
    cfg = make_cfg()
    calls: list[Callable[[], object]] = [
        lambda: store.allow(cfg),
        lambda: store.record(cfg, 0, True),
        lambda: store.force(cfg.name, State.FORCED_OPEN),
        lambda: store.reset(cfg.name),
        lambda: store.snapshot(cfg),
        lambda: store.snapshots([cfg]),
    ]
    started = time.monotonic()
    for call in calls:
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert isinstance(info.value.__cause__, redis.RedisError)
    assert time.monotonic() - started < 1


@pytest.mark.redis
def test_dead_redis_with_default_client_retries_still_ends(make_cfg: Callable[..., BreakerConfig]) -> None:
    # redis-py 8 retries 3 times with exponential backoff by default (about 4 s on a refused port):
    # bounded, but far from "quickly", which is why the store's client must be built with retries off.
    store = RedisBreakerStore(redis.Redis(port=1, socket_timeout=0.2))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.allow(make_cfg())
    assert time.monotonic() - started < 10
