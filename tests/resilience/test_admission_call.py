"""The admission's one round trip, sent and read on a pooled connection: what Redis says back, and what it does not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from resilience.engine.limiter import Algorithm, LimitSpec, StoreDataError, StoreUnavailable
from resilience.stores.admission import RedisAdmission
from resilience.stores.keys import slot_keys, slots_base
from resilience.stores.redis_breaker import RedisBreakerStore
from resilience.stores.redis_concurrency import SlotRequest
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.live import RedisServer

pytestmark = pytest.mark.redis


def admission_on(client: redis.Redis) -> RedisAdmission:
    run = uuid.uuid4().hex
    return RedisAdmission(
        RedisLimiterStore(client, version_key=f"{run}:version"), RedisBreakerStore(client, prefix=f"{run}:cb:")
    )


def spec(limit: int = 3) -> LimitSpec:
    return LimitSpec(f"{uuid.uuid4().hex}:rl:{{1.0:ip}}", Algorithm.FIXED_WINDOW, limit, 60)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


def test_a_script_redis_lost_is_loaded_again(server: RedisServer) -> None:
    client = server.client()
    admission, counted = admission_on(client), spec()
    assert admission.admit([counted], []).hit.decisions[0].remaining == 2

    client.script_flush()  # as after a restart or a failover: EVALSHA answers NOSCRIPT

    assert admission.admit([counted], []).hit.decisions[0].remaining == 1


def test_an_error_reply_is_this_call_s_and_leaves_the_connection_in_step(server: RedisServer) -> None:
    client = server.client(max_connections=1)  # every call on the one connection
    admission, fine = admission_on(client), spec()
    base = slots_base(uuid.uuid4().hex, 1, "all")
    client.set(slot_keys(base)[0], "not a set of leases")
    slot = SlotRequest(base, "lease", limit=1, lease_seconds=30, wait_ms=0, force=False)

    with pytest.raises(StoreDataError):  # the store answered: this operation's data is at fault
        admission.admit([], [], slots=[slot])

    replies = [admission.admit([fine], []).hit.decisions[0].remaining for _ in range(3)]
    assert replies == [2, 1, 0], "each reply read by the call that asked for it"


def test_a_lost_connection_is_dropped_and_the_next_call_reconnects(server: RedisServer) -> None:
    client = server.client(max_connections=1)
    admission, counted = admission_on(client), spec()
    assert admission.admit([counted], []).hit.allowed

    server.stop()
    with pytest.raises(StoreUnavailable):
        admission.admit([counted], [])
    server.start()  # a fresh Redis on the same port: every key lost

    assert admission.admit([counted], []).hit.decisions[0].remaining == 2
