"""The resilience layer on a real Redis Cluster: three masters and three replicas on loopback.

The same promises as on one Redis (test_ratelimit_live.py, test_breaker_live.py): limits exact across
workers and instances, a policy change in force everywhere within a second, exactly K half-open
trials; and one that only a cluster can break: a request refused by a limit in one slot leaves
the counters of its limits in other slots untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.conf import settings

from accounts.models import User
from catalog.models import Book
from resilience.engine.breaker import State
from resilience.engine.limiter import Algorithm, LimitSpec
from resilience.runtime import Runtime
from resilience.runtime.policies import breaker_config
from resilience.stores.cluster import ClusterAdmission
from resilience.stores.keys import breaker_prefix, events_channel, key_slot, limit_key, slots_base, version_key
from resilience.stores.redis_breaker import RedisBreakerStore
from resilience.stores.redis_concurrency import RedisConcurrencyStore, SlotRequest
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.live import LiveServer, LocalRedisCluster, with_live_password
from tests.resilience.test_breaker_known_open import heard, opened
from tests.resilience.test_breaker_live import SEARCH, Ops, kinds, search_breaker
from tests.resilience.test_breaker_live import fire as fire_together
from tests.resilience.test_ratelimit_live import (
    Admin,
    after_propagation,
    book_path,
    burst,
    exact_path,
    fire,
    make_policy,
    new_source,
    policy_quota,
    statuses,
)

pytestmark = [pytest.mark.live, pytest.mark.redis]


@pytest.fixture
def cluster_client(redis_cluster: LocalRedisCluster) -> Iterator[Any]:
    client = redis_cluster.client()
    yield client
    client.close()


def on_cluster(cluster: LocalRedisCluster, **env: str) -> dict[str, str]:
    """Return a LiveServer's env_overrides that put its cache and resilience stores on ``cluster``."""
    return {"REDIS_URL": "", "REDIS_CLUSTER_NODES": cluster.nodes, **env}


def prefix() -> str:
    return str(settings.RESILIENCE_KEY_PREFIX)


# --- exact across workers and instances -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("algorithm", ["sliding_window", "token_bucket"])
def test_limits_are_exact_across_instances_on_a_cluster(
    algorithm: str,
    redis_cluster: LocalRedisCluster,
    cluster_client: Any,
    live_servers: Callable[..., LiveServer],
    make_book: Callable[..., Book],
) -> None:
    """1000 requests, 64 at a time, over 4 + 2 workers: exactly 100 get in, and a second limit in
    another slot counts exactly those 100 (the 900 refused ones were given back)."""
    limit, total = 100, 1000
    book = make_book()
    # A token bucket refilling once every 36 s: none can refill during the burst.
    extra = {"period": 3600, "burst": limit} if algorithm == "token_bucket" else {"period": 60}
    per_ip = make_policy(
        name="cluster-exact", match_type="regex", pattern=exact_path(book), key="ip", algorithm=algorithm,
        limit=limit, **extra,
    )  # fmt: skip
    # Never refuses (a sliding log, so its count can be read): it only has to count what got in.
    everyone = make_policy(
        name="cluster-everyone", match_type="regex", pattern=exact_path(book), key="global",
        algorithm="sliding_window", limit=10 * total, period=60,
    )  # fmt: skip
    ip_key = limit_key(prefix(), per_ip.pk, per_ip.epoch, "127.0.0.1")
    global_key = limit_key(prefix(), everyone.pk, everyone.epoch, "all")
    assert key_slot(ip_key) != key_slot(global_key)  # one request, two slots
    first = live_servers(workers=4, env_overrides=on_cluster(redis_cluster))
    second = live_servers(workers=2, env_overrides=on_cluster(redis_cluster))
    ports = [first.port, second.port]

    replies = fire(((ports[i % 2], book_path(book), None, {}) for i in range(total)), concurrency=64)

    assert statuses(replies) == {200: limit, 429: total - limit}
    assert {r.port for r in replies if r.status == 200} == set(ports)
    assert cluster_client.zcard(global_key) == limit
    assert cluster_client.exists(ip_key) == 1  # the limit lived in the cluster, not in a fallback


# --- policy changes ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_admin_change_is_in_force_on_every_worker_within_a_second_on_a_cluster(
    redis_cluster: LocalRedisCluster,
    cluster_client: Any,
    live_servers: Callable[..., LiveServer],
    make_book: Callable[..., Book],
) -> None:
    book = make_book()
    path = book_path(book)
    with_live_password(User.objects.create_superuser(username="ops", email="ops@example.com", password=None))
    policy = make_policy(
        name="cluster-admin", match_type="regex", pattern=exact_path(book), key="ip", limit=1000, period=60
    )
    server = live_servers(workers=4, env_overrides=on_cluster(redis_cluster))
    before = burst(server.port, path, 16, source=new_source(), probe="before")
    assert statuses(before) == {200: 16}

    changed = Admin(server, "ops", "correct-horse-battery").change(policy, limit="3")

    for replies in after_propagation(server, path, changed, probe="lowered"):
        assert {policy_quota(r, "cluster-admin") for r in replies} == {3}
        assert statuses(replies) == {200: 3, 429: len(replies) - 3}
    # Signalled through the cluster's counter, not found later in PostgreSQL.
    assert int(cluster_client.get(version_key(prefix())) or 0) >= 1


# --- half-open trials ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_half_open_admits_exactly_k_trials_on_a_cluster(
    redis_cluster: LocalRedisCluster, cluster_client: Any, live_servers: Callable[..., LiveServer], staff: User
) -> None:
    k = 3
    policy = search_breaker(failure_threshold=1, open_seconds=30, half_open_max_calls=k)
    cfg = breaker_config(policy)
    store = RedisBreakerStore(cluster_client, prefix=breaker_prefix(prefix()), events_channel=events_channel(prefix()))
    env = on_cluster(redis_cluster, FAULT_INJECTION="true", CACHE_KEY_PREFIX=f"{prefix()}cache")
    server = live_servers(workers=4, env_overrides=env)
    ops = Ops(server, staff)
    # Tripped an hour ago: its open period is over, the next call finds it half-open.
    then = time.time() - 3600
    store.reset(cfg.name, then)
    permit, _ = store.allow(cfg, then)
    store.record(cfg, permit.generation, False, then)
    assert store.snapshot(cfg).state is State.HALF_OPEN
    # Healthy but slow: the K trials are still running while the other 61 requests arrive.
    ops.fault("slow", delay_ms=1500)
    before = ops.calls()

    replies = fire_together(server.port, SEARCH, 64, 64, together=True)

    assert ops.calls() - before == k
    assert kinds(replies) == {"ok": k, "temporary-reduced-capacity": 64 - k}
    assert store.snapshot(cfg).state is State.CLOSED  # K successes closed it
    ops.fault(None)


# --- refunds -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_a_request_refused_in_one_slot_consumes_nothing_in_another(algorithm: Algorithm, cluster_client: Any) -> None:
    run = f"{prefix()}refund-{algorithm.value}-{time.monotonic_ns()}:"
    limiter = RedisLimiterStore(cluster_client, version_key=version_key(run), events_channel=events_channel(run))
    admission = ClusterAdmission(limiter, RedisBreakerStore(cluster_client, prefix=breaker_prefix(run)))
    a = LimitSpec(limit_key(run, 1, 0, "a"), algorithm, 3, 3600)
    b = LimitSpec(limit_key(run, 2, 0, "b"), Algorithm.FIXED_WINDOW, 1, 3600)
    assert key_slot(a.key) != key_slot(b.key)
    assert admission.admit([a, b], []).hit.allowed  # A: 1 of 3 used, B: exhausted

    for _ in range(10):
        refused = admission.admit([a, b], [])
        assert not refused.hit.allowed
        assert refused.hit.decisions[0].allowed
        assert refused.hit.decisions[0].remaining == 2

    # A alone: the 2 left are there, and then no more.
    assert [admission.admit([a], []).hit.allowed for _ in range(3)] == [True, True, False]


def test_limits_are_exact_and_refunded_under_concurrency_on_a_cluster(cluster_client: Any) -> None:
    """64 threads, 400 admissions of two limits in two slots: the tight one admits 50, the loose one counts 50."""
    run = f"{prefix()}refund-many-{time.monotonic_ns()}:"
    limiter = RedisLimiterStore(cluster_client, version_key=version_key(run))
    admission = ClusterAdmission(limiter, RedisBreakerStore(cluster_client, prefix=breaker_prefix(run)))
    tight = LimitSpec(limit_key(run, 1, 0, "t"), Algorithm.TOKEN_BUCKET, 50, 3600)
    loose = LimitSpec(limit_key(run, 2, 0, "l"), Algorithm.SLIDING_WINDOW, 10_000, 3600)

    with ThreadPoolExecutor(max_workers=64) as pool:
        outcomes = list(pool.map(lambda _: admission.admit([loose, tight], []).hit.allowed, range(400)))

    assert outcomes.count(True) == 50
    assert cluster_client.zcard(loose.key) == 50


def test_bulkhead_slots_on_a_cluster_go_only_to_admitted_requests(cluster_client: Any) -> None:
    run = f"{prefix()}slots-{time.monotonic_ns()}:"
    concurrency = RedisConcurrencyStore(cluster_client)
    admission = ClusterAdmission(
        RedisLimiterStore(cluster_client, version_key=version_key(run)),
        RedisBreakerStore(cluster_client, prefix=breaker_prefix(run)),
        concurrency,
    )
    base = slots_base(run, 1, "all")
    closed = LimitSpec(limit_key(run, 2, 0, "x"), Algorithm.FIXED_WINDOW, 0, 60)  # a limit of 0 refuses all

    def slot(lease: str) -> SlotRequest:
        return SlotRequest(base, lease, limit=1, lease_seconds=30, wait_ms=0, force=False)

    assert admission.admit([closed], [], slots=[slot("refused")]).slots == []
    assert concurrency.status(base) == (0, 0)
    assert [a.acquired for a in admission.admit([], [], slots=[slot("first")]).slots] == [True]
    assert [a.acquired for a in admission.admit([], [], slots=[slot("second")]).slots] == [False]
    concurrency.release(base, "first")
    assert [a.acquired for a in admission.admit([], [], slots=[slot("second")]).slots] == [True]


def test_a_breaker_seen_open_is_remembered_and_a_reset_elsewhere_heard_on_a_cluster(
    runtime_on_cluster: Runtime, redis_cluster: LocalRedisCluster, make_book: Callable[..., Book]
) -> None:
    """PUBLISH on a cluster reaches every node: the subscription on one master hears a reset made on another."""
    policy, page, client = opened(make_book, open_seconds=30)
    other = redis_cluster.client()
    try:
        store = RedisBreakerStore(other, prefix=breaker_prefix(prefix()), events_channel=events_channel(prefix()))
        store.reset(policy.name)
        heard(policy.name)  # forgotten long before its 30 s: the reset was heard
    finally:
        other.close()
    assert client.get(page).status_code == 200
