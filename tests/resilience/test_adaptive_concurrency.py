"""Adaptive bulkheads: the fleet's limit shrinks while calls are slow and grows back while they are fast."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable

import pytest
import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import Client

from accounts.models import User
from resilience.engine.concurrency import ADJUST_SECONDS, DECREASE, SLOW_SHARE, aimd_step
from resilience.http.bulkheads import ConcurrencyLimited, bulkhead
from resilience.models import ConcurrencyPolicy
from resilience.runtime import get_runtime
from resilience.runtime.policies import compile_concurrency
from resilience.stores import scripts
from tests.conftest import make_concurrency

pytestmark = pytest.mark.redis


def within(seconds: float, condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_the_script_moves_the_limit_as_the_engine_does() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    script = client.register_script(scripts.script("adaptive_main"))
    key, rng = f"{settings.RESILIENCE_KEY_PREFIX}cc-limit:{{{uuid.uuid4().hex}}}", random.Random(20261203)
    floor, ceiling, limit = 2, 40, 40
    try:
        for _ in range(300):
            calls = rng.choice([0, 1, 5, 20])
            slow = rng.randint(0, calls)
            # An interval of 0 ms: every report closes one, so each step is aimd_step's.
            got = int(script(keys=[key], args=[calls, slow, floor, ceiling, 0, SLOW_SHARE, DECREASE]))
            limit = aimd_step(limit, calls, slow, floor, ceiling)
            assert got == limit
    finally:
        client.delete(key)
        client.close()


def test_slow_calls_shrink_the_limit_to_its_floor_and_fast_ones_grow_it_back(db: None) -> None:
    policy = make_concurrency(
        name="adaptive-db", match_type="code", pattern="adaptive-db", max_in_flight=20, adaptive_floor=3,
        adaptive_target_ms=1,
    )  # fmt: skip
    runtime = get_runtime()

    def limit() -> int:
        return runtime.adaptive.limit(runtime.snapshot().concurrency_by_name["adaptive-db"])

    assert limit() == 20  # the ceiling until the fleet has judged a call

    def slow_calls() -> bool:
        for _ in range(5):
            with bulkhead("adaptive-db"):
                time.sleep(0.005)  # over the 1 ms target
        return limit() == 3

    within(40 * ADJUST_SECONDS, slow_calls, "slow calls never brought the limit down to its floor")
    # The fleet's limit, as the dashboard reads it from Redis.
    assert _shown_limit(policy) == 3

    policy.adaptive_target_ms = 60_000
    policy.full_clean()
    policy.save()
    runtime.invalidate()

    def fast_calls() -> bool:
        for _ in range(5):
            with bulkhead("adaptive-db"):
                pass
        return limit() >= 5

    within(20 * ADJUST_SECONDS, fast_calls, "fast calls never let the limit grow again")


def test_slots_are_handed_out_under_the_limit_as_it_is_now(db: None) -> None:
    make_concurrency(
        name="adaptive-now", match_type="code", pattern="adaptive-now", max_in_flight=10, adaptive_floor=1,
        adaptive_target_ms=1,
    )  # fmt: skip
    runtime = get_runtime()
    rule = runtime.snapshot().concurrency_by_name["adaptive-now"]

    def at_floor() -> bool:
        with bulkhead("adaptive-now"):
            time.sleep(0.005)
        return runtime.adaptive.limit(rule) == 1

    within(40 * ADJUST_SECONDS, at_floor, "the limit never reached its floor")
    # A second at once: over the limit of 1, though max_in_flight is 10.
    with bulkhead("adaptive-now"), pytest.raises(ConcurrencyLimited), bulkhead("adaptive-now"):
        pass


def _shown_limit(policy: ConcurrencyPolicy) -> int:
    from resilience import services

    (row,) = services.concurrency_status(policies=[policy])
    return int(str(row["limit"]))


def test_a_floor_above_the_ceiling_is_refused_with_the_field_named(db: None) -> None:
    policy = ConcurrencyPolicy(name="bad-floor", pattern="/api/", max_in_flight=4, adaptive_floor=5)

    with pytest.raises(ValidationError) as refused:
        policy.full_clean()

    assert "adaptive_floor" in refused.value.message_dict


def test_staff_see_the_adaptive_limit_on_the_dashboard(db: None, staff: User) -> None:
    policy = make_concurrency(name="adaptive-seen", pattern="/api/books", max_in_flight=8, adaptive_floor=2)
    web = Client()
    web.force_login(staff)

    data = web.get("/admin/resilience/dashboard/data.json").json()

    (row,) = [c for c in data["concurrency"] if c["name"] == policy.name]
    assert (row["adaptive_floor"], row["max_in_flight"], row["limit"]) == (2, 8, 8)
    assert compile_concurrency(policy).floor == 2
