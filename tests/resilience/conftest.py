"""Fixtures that run real processes (gunicorn on the test database, a private Redis), and a fresh runtime."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from resilience.runtime import Runtime, get_runtime, reset_runtime
from resilience.stores.keys import breaker_prefix, events_channel, version_key
from resilience.stores.redis_breaker import RedisBreakerStore
from resilience.stores.redis_concurrency import RedisConcurrencyStore
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.live import LocalRedisCluster, RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Return a started private redis-server on a free loopback port, closed at teardown."""
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """Return a Redis Cluster on loopback (3 masters, 3 replicas), started once and stopped by PID at the end."""
    with LocalRedisCluster() as cluster:
        yield cluster


@pytest.fixture
def runtime_on_cluster(db: None, redis_cluster: LocalRedisCluster) -> Iterator[Runtime]:
    """Return this process's runtime with its shared stores on the cluster, as REDIS_CLUSTER_NODES would build it."""
    reset_runtime()
    runtime = get_runtime()
    client = redis_cluster.client()
    prefix = settings.RESILIENCE_KEY_PREFIX
    runtime.shared = RedisLimiterStore(  # type: ignore[assignment]  # the Redis store in its place
        client, version_key=version_key(prefix), events_channel=events_channel(prefix)
    )
    runtime.breaker_shared = RedisBreakerStore(
        client, prefix=breaker_prefix(prefix), events_channel=events_channel(prefix)
    )
    runtime.concurrency_shared = RedisConcurrencyStore(client)
    runtime.invalidate()
    yield runtime
    reset_runtime()
    client.close()


@pytest.fixture
def fresh_runtime(db: None) -> Iterator[None]:
    """A runtime of its own, so what an earlier test taught this process (refusals, subscriptions) is not known."""
    reset_runtime()
    yield
    reset_runtime()


@pytest.fixture
def other() -> Iterator[redis.Redis]:
    """A Redis connection of another process (an operator's shell, another instance)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()
