from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from resilience.engine.limiter import (
    Algorithm,
    Decision,
    HitResult,
    LimiterStore,
    LimitSpec,
    Rate,
    StoreUnavailable,
    parse_rate,
)
from resilience.stores.memory_limiter import MemoryLimiterStore
from resilience.stores.redis_limiter import RedisLimiterStore

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# 2023-11-14 00:00:00 UTC: a multiple of every period used below, so fixed windows start here.
T0_US = 1_699_920_000 * 1_000_000
ALL_ALGORITHMS = list(Algorithm)


class FakeClock:
    """Count whole microseconds so that advancing never accumulates float error."""

    def __init__(self) -> None:
        self.us = T0_US

    def __call__(self) -> float:
        return self.us / 1_000_000

    def advance(self, seconds: float) -> None:
        self.us += round(seconds * 1_000_000)

    def set(self, seconds_after_t0: float) -> None:
        self.us = T0_US + round(seconds_after_t0 * 1_000_000)


@dataclass
class Env:
    """Bundle a store with its fake clock and a key factory that keeps tests apart in Redis."""

    store: LimiterStore
    clock: FakeClock
    prefix: str
    client: redis.Redis | None = None
    keys: list[str] = field(default_factory=list)

    def key(self, name: str = "k") -> str:
        return f"{self.prefix}:{{{name}}}"

    def spec(self, algorithm: Algorithm, limit: int, period: int, name: str = "k", **kw: Any) -> LimitSpec:
        return LimitSpec(self.key(name), algorithm, limit, period, **kw)

    def hit(self, *specs: LimitSpec, cost: int = 1) -> HitResult:
        return self.store.hit(specs, cost=cost, now=self.clock())

    def one(self, spec: LimitSpec, cost: int = 1) -> Decision:
        return self.hit(spec, cost=cost).decisions[0]

    def test(self, *specs: LimitSpec) -> list[Decision]:
        return self.store.test(specs, now=self.clock())


def _unique_prefix() -> str:
    return f"test:rl:{uuid.uuid4().hex}"


def _cleanup(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis not reachable at {REDIS_URL}: {e}")
    yield client
    client.close()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def env(request: pytest.FixtureRequest, fake_clock: FakeClock) -> Iterator[Env]:
    prefix = _unique_prefix()
    if request.param == "memory":
        yield Env(MemoryLimiterStore(clock=fake_clock), fake_clock, prefix)
        return
    client = request.getfixturevalue("redis_client")
    store = RedisLimiterStore(client, version_key=f"{prefix}:version")
    yield Env(store, fake_clock, prefix, client=client)
    _cleanup(client, prefix)


# --- parse_rate -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/minute", Rate(100, 60)),
        ("100/min", Rate(100, 60)),
        ("100/m", Rate(100, 60)),
        ("5/second", Rate(5, 1)),
        ("5/s", Rate(5, 1)),
        ("1000/hour", Rate(1000, 3600)),
        ("10/day", Rate(10, 86400)),
        ("100/60", Rate(100, 60)),
        ("100/30s", Rate(100, 30)),
        ("5/10m", Rate(5, 600)),
        ("20/1h", Rate(20, 3600)),
        (" 7 / 2 Minutes ", Rate(7, 120)),
        ("0/minute", Rate(0, 60)),
        ("1000000000/1", Rate(1_000_000_000, 1)),
        ("1/366d", Rate(1, 366 * 86400)),
    ],
)
def test_parse_rate_accepts(text: str, expected: Rate) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected"),
        ("100", "expected"),
        ("100/", "expected"),
        ("/minute", "expected"),
        ("-1/minute", "expected"),
        ("1.5/minute", "expected"),
        ("ten/minute", "expected"),
        ("10/fortnight", "unknown unit"),
        ("10/0", "at least 1 second"),
        ("10/0s", "at least 1 second"),
        ("1000000001/s", "at most"),
        ("1/367d", "at most"),
        ("5/\u0665s", "expected"),  # an Arabic-Indic digit is not a number here
    ],
)
def test_parse_rate_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


def test_parse_rate_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_rate(100)  # type: ignore[arg-type]  # a wrong type on purpose


# --- token bucket (GCRA) ----------------------------------------------------------------------------


def test_token_bucket_burst_then_refill_exact(env: Env) -> None:
    spec = env.spec(Algorithm.TOKEN_BUCKET, 10, 10, burst=5)  # one token per second, five at once

    for i in range(1, 6):
        assert env.one(spec) == Decision(True, 5, 5 - i, float(i), 0.0)
    assert env.one(spec) == Decision(False, 5, 0, 5.0, 1.0)

    env.clock.advance(0.999_999)
    assert env.test(spec)[0] == Decision(False, 5, 0, 4.000_001, 0.000_001)
    env.clock.advance(0.000_001)
    assert env.one(spec) == Decision(True, 5, 0, 5.0, 0.0)

    # Sustained at exactly the rate: one admission per second, never two.
    for _ in range(20):
        env.clock.advance(1.0)
        assert env.one(spec).allowed
        assert not env.one(spec).allowed

    # Idle for reset_after: the whole burst is back, and no more.
    env.clock.advance(5.0)
    assert env.test(spec)[0] == Decision(True, 5, 5, 0.0, 0.0)
    assert [env.one(spec).allowed for _ in range(6)] == [True] * 5 + [False]


def test_token_bucket_burst_defaults_to_limit(env: Env) -> None:
    spec = env.spec(Algorithm.TOKEN_BUCKET, 3, 60)
    assert [env.one(spec).allowed for _ in range(4)] == [True, True, True, False]
    assert env.test(spec)[0] == Decision(False, 3, 0, 60.0, 20.0)


# --- sliding window ---------------------------------------------------------------------------------


def test_sliding_window_has_no_boundary_burst(env: Env) -> None:
    sliding = env.spec(Algorithm.SLIDING_WINDOW, 5, 10, name="sliding")
    fixed = env.spec(Algorithm.FIXED_WINDOW, 5, 10, name="fixed")

    env.clock.set(9.9)  # just before a fixed-window boundary
    for _ in range(5):
        assert env.hit(sliding).allowed
        assert env.hit(fixed).allowed

    env.clock.set(10.1)  # just after it
    assert not env.hit(sliding).allowed
    assert env.hit(fixed).allowed  # the fixed window's 2x burst that the sliding log prevents
    assert env.test(sliding)[0] == Decision(False, 5, 0, 9.8, 9.8)

    env.clock.set(19.9)
    assert env.one(sliding) == Decision(True, 5, 4, 10.0, 0.0)


def test_sliding_window_never_admits_more_than_limit_in_any_span(env: Env) -> None:
    limit, period_ms = 7, 5_000
    spec = env.spec(Algorithm.SLIDING_WINDOW, limit, period_ms // 1000)
    rng = random.Random(20231114)
    # Bursts and gaps over 40 s, on a millisecond grid so the check below is exact.
    times = sorted(rng.choice([rng.randrange(40_000), rng.randrange(4_900, 5_100)]) for _ in range(400))
    admitted: list[int] = []
    denied: list[int] = []
    for ms in times:
        env.clock.set(ms / 1000)
        (admitted if env.hit(spec).allowed else denied).append(ms)

    for start in admitted:  # the busiest half-open span starts at an admission
        assert sum(start <= t < start + period_ms for t in admitted) <= limit
    for ms in denied:  # and nothing was denied while the window had room
        assert sum(ms - period_ms < t <= ms for t in admitted) == limit
    assert len(admitted) > limit * 3


# --- fixed window -----------------------------------------------------------------------------------


def test_fixed_window_resets_at_the_boundary(env: Env) -> None:
    spec = env.spec(Algorithm.FIXED_WINDOW, 3, 60)
    env.clock.set(50)
    assert env.one(spec) == Decision(True, 3, 2, 10.0, 0.0)
    assert env.one(spec).allowed
    assert env.one(spec).allowed
    assert env.one(spec) == Decision(False, 3, 0, 10.0, 10.0)

    env.clock.set(59.999_999)
    assert env.one(spec) == Decision(False, 3, 0, 0.000_001, 0.000_001)
    env.clock.set(60)
    assert env.one(spec) == Decision(True, 3, 2, 60.0, 0.0)


# --- modes and combinations -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_dry_run_never_blocks_but_counts(env: Env, algorithm: Algorithm) -> None:
    dry = env.spec(algorithm, 2, 60, enforce=False)
    results = [env.hit(dry) for _ in range(5)]

    assert all(r.allowed for r in results)
    assert [r.decisions[0].allowed for r in results] == [True, True, False, False, False]
    assert [r.decisions[0].remaining for r in results] == [1, 0, 0, 0, 0]
    assert results[-1].decisions[0].retry_after > 0
    # The same key enforced now sees the two admissions the dry run counted.
    assert env.test(dry._replace(enforce=True))[0].remaining == 0


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_rejected_hit_consumes_nothing_anywhere(env: Env, algorithm: Algorithm) -> None:
    roomy = env.spec(algorithm, 5, 60, name="roomy")
    tight = env.spec(algorithm, 1, 60, name="tight")
    dry = env.spec(algorithm, 5, 60, name="dry", enforce=False)

    first = env.hit(roomy, tight, dry)
    assert first.allowed
    assert [d.remaining for d in first.decisions] == [4, 0, 4]

    second = env.hit(roomy, tight, dry)
    assert not second.allowed
    assert [d.allowed for d in second.decisions] == [True, False, True]
    assert [d.remaining for d in second.decisions] == [4, 0, 4]  # state after the hit: untouched
    assert [d.remaining for d in env.test(roomy, tight, dry)] == [4, 0, 4]


def test_rejected_hit_consumes_nothing_across_algorithms(env: Env) -> None:
    specs = [
        env.spec(Algorithm.TOKEN_BUCKET, 10, 60, name="a"),
        env.spec(Algorithm.SLIDING_WINDOW, 10, 60, name="b"),
        env.spec(Algorithm.FIXED_WINDOW, 2, 60, name="c"),
    ]
    assert env.hit(*specs).allowed
    assert env.hit(*specs).allowed
    assert not env.hit(*specs).allowed
    assert [d.remaining for d in env.test(*specs)] == [8, 8, 0]


def test_dry_run_denial_does_not_block_or_consume(env: Env) -> None:
    enforced = env.spec(Algorithm.SLIDING_WINDOW, 10, 60, name="enforced")
    dry = env.spec(Algorithm.SLIDING_WINDOW, 1, 60, name="dry", enforce=False)
    env.hit(enforced, dry)
    result = env.hit(enforced, dry)
    assert result.allowed
    assert [d.allowed for d in result.decisions] == [True, False]
    assert [d.remaining for d in env.test(enforced, dry)] == [8, 0]


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_limit_zero_denies_everything_and_writes_nothing(env: Env, algorithm: Algorithm) -> None:
    spec = env.spec(algorithm, 0, 30, burst=None)
    for _ in range(3):
        result = env.hit(spec)
        assert not result.allowed
        assert result.decisions[0] == Decision(False, 0, 0, 30.0, 30.0)
    assert env.hit(spec._replace(enforce=False)).allowed
    assert env.store.reset([spec.key]) == 0


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_empty_state_reports_full_quota(env: Env, algorithm: Algorithm) -> None:
    assert env.test(env.spec(algorithm, 4, 60)) == [Decision(True, 4, 4, 0.0, 0.0)]
    assert env.hit().allowed  # no specs: nothing to deny


# --- editing a policy mid-stream --------------------------------------------------------------------


def test_token_bucket_edit_keeps_state_meaningful(env: Env) -> None:
    base = env.spec(Algorithm.TOKEN_BUCKET, 10, 10)
    for _ in range(10):
        assert env.one(base).allowed
    assert env.test(base)[0].retry_after == 1.0

    slower = base._replace(limit=2)  # 1 per 5 s: the debt is kept in time, not in tokens
    assert env.test(slower)[0] == Decision(False, 2, 0, 10.0, 5.0)
    faster = base._replace(limit=100)
    assert env.test(faster)[0] == Decision(False, 100, 0, 10.0, 0.1)
    # A smaller burst clamps the debt to the new capacity: nobody is locked out for longer.
    smaller = base._replace(burst=2)
    assert env.test(smaller)[0] == Decision(False, 2, 0, 2.0, 1.0)
    env.clock.advance(1.0)
    assert env.one(smaller) == Decision(True, 2, 0, 2.0, 0.0)


@pytest.mark.parametrize("algorithm", [Algorithm.SLIDING_WINDOW, Algorithm.FIXED_WINDOW])
def test_window_edit_compares_the_count_against_the_new_limit(env: Env, algorithm: Algorithm) -> None:
    spec = env.spec(algorithm, 5, 60)
    for _ in range(5):
        assert env.one(spec).allowed
    assert env.one(spec._replace(limit=3)) == Decision(False, 3, 0, 60.0, 60.0)
    raised = spec._replace(limit=8)
    assert [env.one(raised).remaining for _ in range(3)] == [2, 1, 0]
    assert not env.one(raised).allowed


def test_algorithm_switch_on_a_key_starts_afresh(env: Env) -> None:
    for algorithm in [*ALL_ALGORITHMS, Algorithm.TOKEN_BUCKET]:
        spec = env.spec(algorithm, 2, 60)
        assert env.one(spec).remaining == 1
        assert env.one(spec).remaining == 0


# --- reported numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_reported_times_are_consistent_and_exact(env: Env, algorithm: Algorithm) -> None:
    spec = env.spec(algorithm, 7, 60, burst=3 if algorithm is Algorithm.TOKEN_BUCKET else None)
    rng = random.Random(7)
    denials = 0
    for _ in range(150):
        env.clock.advance(rng.choice([0, 0, 0.25, 1, 3.7, 9]))
        decision = env.one(spec)
        assert 0 <= decision.remaining <= decision.limit
        assert decision.reset_after >= 0
        if decision.allowed:
            assert decision.retry_after == 0.0
            continue
        denials += 1
        assert 0 < decision.retry_after <= decision.reset_after
        # One microsecond short is still too early; exactly retry_after later is admitted.
        env.clock.advance(decision.retry_after - 0.000_001)
        assert not env.test(spec)[0].allowed
        env.clock.advance(0.000_001)
        assert env.one(spec).allowed
    assert denials > 10


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_remaining_counts_the_requests_admitted_right_now(env: Env, algorithm: Algorithm) -> None:
    spec = env.spec(algorithm, 7, 60)
    env.clock.set(1)
    env.hit(spec, cost=3)
    env.clock.set(13)
    remaining = env.test(spec)[0].remaining
    assert [env.one(spec).allowed for _ in range(remaining + 1)] == [True] * remaining + [False]


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_cost_is_taken_whole_or_not_at_all(env: Env, algorithm: Algorithm) -> None:
    spec = env.spec(algorithm, 5, 60)
    assert env.one(spec, cost=3).remaining == 2
    assert not env.one(spec, cost=3).allowed
    assert env.one(spec, cost=2).remaining == 0
    too_big = env.one(spec._replace(key=env.key("other")), cost=6)
    assert not too_big.allowed
    assert too_big.retry_after == 60.0


def test_reset_deletes_state(env: Env) -> None:
    spec = env.spec(Algorithm.FIXED_WINDOW, 1, 60)
    assert env.hit(spec).allowed
    assert not env.hit(spec).allowed
    assert env.store.reset([spec.key, env.key("never-written")]) == 1
    assert env.hit(spec).allowed
    assert env.store.reset([]) == 0


def test_version_bump_is_visible_in_the_next_hit(env: Env) -> None:
    spec = env.spec(Algorithm.TOKEN_BUCKET, 5, 60)
    assert env.hit(spec).version == 0
    assert env.store.bump_version() == 1
    assert env.store.bump_version() == 2
    assert env.hit(spec).version == 2
    assert env.store.version() == 2


def test_invalid_input_raises_value_error(env: Env) -> None:
    spec = env.spec(Algorithm.TOKEN_BUCKET, 5, 60)
    with pytest.raises(ValueError, match="twice"):
        env.hit(spec, spec)
    with pytest.raises(ValueError, match="cost"):
        env.hit(spec, cost=0)
    with pytest.raises(ValueError, match="algorithm"):
        env.hit(spec._replace(algorithm="leaky"))
    with pytest.raises(ValueError, match="period"):
        env.hit(spec._replace(period=0))
    with pytest.raises(ValueError, match="burst"):
        env.hit(spec._replace(burst=0))
    with pytest.raises(ValueError, match="limit"):
        env.hit(spec._replace(limit=-1))


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_concurrent_hits_admit_exactly_the_limit(env: Env, algorithm: Algorithm) -> None:
    spec = env.spec(algorithm, 100, 3600)
    # The Redis store runs on Redis TIME here (no override), except the fixed window, which must
    # not straddle an hour boundary while the test runs.
    use_fake = env.client is None or algorithm is Algorithm.FIXED_WINDOW
    admitted: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(32)

    def worker() -> None:
        try:
            start.wait()
            for _ in range(10):
                now = env.clock() if use_fake else None
                admitted.append(env.store.hit([spec], now=now).allowed)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(admitted) == 320
    assert sum(admitted) == 100


# --- memory store specifics -------------------------------------------------------------------------


def test_memory_store_caps_the_number_of_keys(fake_clock: FakeClock) -> None:
    store = MemoryLimiterStore(clock=fake_clock, max_keys=10)
    for i in range(50):
        store.hit([LimitSpec(f"k{i}", Algorithm.FIXED_WINDOW, 5, 60)])
    assert len(store) == 10
    # The least recently written keys went first.
    assert store.test([LimitSpec("k49", Algorithm.FIXED_WINDOW, 5, 60)])[0].remaining == 4
    assert store.test([LimitSpec("k0", Algorithm.FIXED_WINDOW, 5, 60)])[0].remaining == 5


def test_memory_store_sweeps_expired_keys(fake_clock: FakeClock) -> None:
    store = MemoryLimiterStore(clock=fake_clock)
    for i in range(1500):
        store.hit([LimitSpec(f"old{i}", Algorithm.SLIDING_WINDOW, 5, 1)])
    fake_clock.advance(2)
    for i in range(1500):
        store.hit([LimitSpec(f"new{i}", Algorithm.SLIDING_WINDOW, 5, 1)])
    assert len(store) == 1500


def test_memory_store_uses_its_clock_without_override(fake_clock: FakeClock) -> None:
    store = MemoryLimiterStore(clock=fake_clock)
    spec = LimitSpec("k", Algorithm.FIXED_WINDOW, 1, 60)
    assert store.hit([spec]).allowed
    assert not store.hit([spec]).allowed
    fake_clock.advance(60)
    assert store.hit([spec]).allowed


# --- Redis store specifics --------------------------------------------------------------------------


@pytest.fixture
def redis_env(redis_client: redis.Redis, fake_clock: FakeClock) -> Iterator[Env]:
    prefix = _unique_prefix()
    store = RedisLimiterStore(redis_client, version_key=f"{prefix}:version")
    yield Env(store, fake_clock, prefix, client=redis_client)
    _cleanup(redis_client, prefix)


@pytest.mark.redis
@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_redis_keys_get_a_ttl(redis_env: Env, algorithm: Algorithm) -> None:
    spec = redis_env.spec(algorithm, 5, 60)
    redis_env.hit(spec)
    assert redis_env.client is not None
    assert 0 < redis_env.client.pttl(spec.key) <= 60_000


@pytest.mark.redis
def test_redis_store_uses_redis_time_without_override(redis_env: Env) -> None:
    spec = redis_env.spec(Algorithm.SLIDING_WINDOW, 2, 60)
    store = redis_env.store
    assert store.hit([spec]).decisions[0] == Decision(True, 2, 1, 60.0, 0.0)
    assert store.hit([spec]).allowed
    denied = store.hit([spec]).decisions[0]
    assert not denied.allowed
    assert 55 < denied.retry_after <= 60


@pytest.mark.redis
def test_redis_store_reloads_a_flushed_script(redis_env: Env, redis_client: redis.Redis) -> None:
    spec = redis_env.spec(Algorithm.TOKEN_BUCKET, 5, 60)
    assert redis_env.hit(spec).allowed
    redis_client.script_flush()  # as after a restart or failover: EVALSHA answers NOSCRIPT
    assert redis_env.hit(spec).decisions[0].remaining == 3


@pytest.mark.redis
def test_both_stores_agree_exactly(redis_env: Env) -> None:
    memory = MemoryLimiterStore(clock=redis_env.clock)
    specs = [
        redis_env.spec(Algorithm.TOKEN_BUCKET, 7, 60, name="gcra", burst=3),
        redis_env.spec(Algorithm.SLIDING_WINDOW, 5, 20, name="log"),
        redis_env.spec(Algorithm.FIXED_WINDOW, 9, 30, name="fixed", enforce=False),
        redis_env.spec(Algorithm.TOKEN_BUCKET, 1000, 3600, name="slow"),
    ]
    rng = random.Random(99)
    for _ in range(300):
        redis_env.clock.advance(rng.choice([0, 0.001, 0.3, 1.7, 6]))
        chosen = rng.sample(specs, rng.randint(1, len(specs)))
        cost = rng.choice([1, 1, 1, 2])
        now = redis_env.clock()
        assert memory.hit(chosen, cost=cost, now=now) == redis_env.store.hit(chosen, cost=cost, now=now)
        assert memory.test(specs, now=now) == redis_env.store.test(specs, now=now)


def test_dead_redis_raises_store_unavailable_quickly() -> None:
    # redis-py 8 retries ten times with backoff by default (~4.6 s against a closed port); a
    # limiter in the request path must be built with a tight retry policy like this one.
    client = redis.Redis(port=1, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    store = RedisLimiterStore(client)
    spec = LimitSpec("rl:{dead}", Algorithm.TOKEN_BUCKET, 5, 60)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.hit([spec])
    assert time.monotonic() - started < 1.0
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    for call in (lambda: store.test([spec]), store.bump_version, store.version, lambda: store.reset(["x"])):
        with pytest.raises(StoreUnavailable):
            call()


def test_sliding_window_takes_a_large_cost(env: Env) -> None:
    spec = env.spec(Algorithm.SLIDING_WINDOW, 20_000, 60)
    assert env.one(spec, cost=12_345).remaining == 7_655
    assert env.one(spec, cost=7_655).remaining == 0
    assert not env.one(spec).allowed
