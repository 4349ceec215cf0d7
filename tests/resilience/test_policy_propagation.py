"""No policy change is lost: not to a worker that lost Redis, not to a signal that failed.

Every change is counted in PostgreSQL in its own transaction and every worker compares that count
every few seconds; a worker never labels a snapshot with a Redis version it did not read; and
staff are told when the instant signal failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from io import StringIO
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from redis.backoff import NoBackoff
from redis.retry import Retry
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Book
from resilience import runtime as runtime_module
from resilience import services
from resilience.models import CircuitBreakerPolicy, PolicyVersion, RateLimitOverride, RateLimitPolicy
from resilience.runtime import (
    POLICY_DB_CHECK_INTERVAL,
    POLICY_RELOAD_BACKOFF,
    VERSION_CHECK_INTERVAL,
    get_runtime,
    key_prefix,
    reset_runtime,
)
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.live import LiveServer, RedisServer, database_url, request

POLICIES = "/admin/resilience/ratelimitpolicy/"
# What staff are promised when the Redis signal fails: in force on every worker within this long (s).
BACKSTOP_SECONDS = 5.0


class Clock:
    """Stand in for the time module inside the runtime, so intervals pass without waiting."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(fresh_runtime: None, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fake clock for a runtime of its own: what it learns under this clock goes with it."""
    fake = Clock()
    monkeypatch.setattr(runtime_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture
def dead_client() -> Iterator[redis.Redis]:
    """A Redis client for an address nobody listens on: every call fails at once."""
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    yield client
    client.close()


@pytest.fixture
def unreachable_redis(redis_server: RedisServer, settings: Any) -> Iterator[RedisServer]:
    """Point this process (the staff member's) at a private Redis, then stop it; other processes keep theirs."""
    settings.REDIS_URL = redis_server.url
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_server.url,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25},
        }
    }
    reset_runtime()
    redis_server.stop()
    yield redis_server
    reset_runtime()


def shut_policy(**fields: Any) -> RateLimitPolicy:
    """Create a validated policy that refuses every request to /api/books (limit 0)."""
    fields = {"name": "books-shut", "pattern": "/api/books", "key": "ip", "limit": 0, "period": 60, **fields}
    policy = RateLimitPolicy(**fields)
    policy.full_clean()
    policy.save()
    return policy


def staff_client() -> Client:
    superuser = User.objects.create_superuser(username="root", email="root@example.com", password="unused-here")
    client = Client()
    client.force_login(superuser)
    return client


def disable_in_change_form(client: Client, policy: RateLimitPolicy) -> str:
    """Untick "enabled" on the policy's change form; return the page staff land on."""
    data = {
        "name": policy.name,
        "mode": policy.mode,
        "priority": str(policy.priority),
        "methods": policy.methods,
        "match_type": policy.match_type,
        "pattern": policy.pattern,
        "key": policy.key,
        "header_name": policy.header_name,
        "rate": "",
        "algorithm": policy.algorithm,
        "limit": str(policy.limit),
        "period": str(policy.period),
        "burst": "",
        "on_store_failure": policy.on_store_failure,
        "overrides-TOTAL_FORMS": "0",
        "overrides-INITIAL_FORMS": "0",
        "overrides-MIN_NUM_FORMS": "0",
        "overrides-MAX_NUM_FORMS": "1000",
    }
    response = client.post(f"{POLICIES}{policy.pk}/change/", data, follow=True)
    assert response.redirect_chain == [(POLICIES, 302)], response.content[:500]
    return response.content.decode()


def run_action(client: Client, name: str, policy: RateLimitPolicy) -> str:
    response = client.post(
        POLICIES,
        {"action": name, "_selected_action": [str(policy.pk)], "index": "0", "select_across": "0"},
        follow=True,
    )
    assert response.status_code == 200
    return response.content.decode()


def assert_warned_of_lost_signal(page: str) -> None:
    """The staff member sees a warning that names the backstop, and no promise of "in force"."""
    assert '<li class="warning">' in page
    assert "could not be told at once" in page
    assert "within 5 s" in page
    assert "In force on every worker" not in page


# --- (a) a worker that lost Redis never reuses a real version number -----------------------------


def test_a_worker_that_lost_redis_reloads_when_a_real_change_takes_the_next_number(
    db: None, clock: Clock, dead_client: redis.Redis, other: redis.Redis, settings: Any
) -> None:
    runtime = get_runtime()
    good = runtime.shared
    policy = shut_policy()
    runtime.invalidate()
    client = APIClient()
    assert client.get("/api/books").status_code == 429
    loaded = good.version()
    assert runtime.snapshot().version == loaded

    # Redis goes away: the worker's next version check finds out, and it limits in process.
    runtime.shared = RedisLimiterStore(dead_client, version_key=good.version_key)
    try:
        clock.now += VERSION_CHECK_INTERVAL
        assert client.get("/api/books").status_code == 429
        assert not runtime.store_available()
    finally:
        runtime.shared = good
    # Redis is back. Staff on another instance disable the policy; its signal takes the next number.
    RateLimitPolicy.objects.filter(pk=policy.pk).update(enabled=False)
    assert RedisLimiterStore(other, version_key=good.version_key).bump_version() == loaded + 1
    clock.now += settings.RESILIENCE_STORE_RETRY_SECONDS + VERSION_CHECK_INTERVAL

    assert client.get("/api/books").status_code == 200


# --- the backstop: a version in PostgreSQL, bumped with every change ------------------------------


def test_every_kind_of_policy_change_counts_in_postgresql(db: None) -> None:
    def counted(change: Callable[[], object]) -> int:
        before = PolicyVersion.current()
        change()
        return PolicyVersion.current() - before

    policy = RateLimitPolicy(name="books-ip", pattern="/api/books", limit=10)
    assert counted(policy.save) == 1
    assert counted(lambda: RateLimitOverride.objects.create(policy=policy, key_value="192.0.2.1", limit=0)) == 1
    assert counted(lambda: services.policy_update(policies=[policy], enabled=False)) == 1  # a queryset update
    assert counted(lambda: services.policy_reset(policies=[policy])) == 1  # a queryset update of the epoch
    assert counted(policy.delete) == 2  # the policy and, by cascade, its override
    breaker = CircuitBreakerPolicy(name="search", match_type="code", pattern="search")
    assert counted(breaker.save) == 1
    assert counted(lambda: CircuitBreakerPolicy.objects.filter(pk=breaker.pk).delete()) == 1


def test_a_change_rolled_back_is_not_counted(db: None) -> None:
    policy = shut_policy()
    before = PolicyVersion.current()

    def abandoned_change() -> None:
        with transaction.atomic():
            services.policy_update(policies=[policy], enabled=False)
            raise RuntimeError("the change is abandoned")

    with pytest.raises(RuntimeError):
        abandoned_change()

    assert PolicyVersion.current() == before
    assert RateLimitPolicy.objects.get(pk=policy.pk).enabled


def test_a_worker_finds_an_unsignalled_change_in_postgresql_within_the_interval(db: None, clock: Clock) -> None:
    policy = shut_policy()
    get_runtime().invalidate()
    client = APIClient()
    assert client.get("/api/books").status_code == 429

    # Committed here (on_commit never runs in this test's transaction): no Redis signal at all.
    services.policy_update(policies=[policy], enabled=False)
    clock.now += POLICY_DB_CHECK_INTERVAL - 0.1
    assert client.get("/api/books").status_code == 429  # not compared yet
    clock.now += 0.1

    assert client.get("/api/books").status_code == 200


def test_the_comparison_costs_one_query_per_interval_not_one_per_request(
    db: None, clock: Clock, django_assert_num_queries: Callable[..., Any]
) -> None:
    shut_policy()
    get_runtime().invalidate()
    client = APIClient()
    assert client.get("/api/books").status_code == 429  # loads the policies

    with django_assert_num_queries(0):
        for _ in range(6):
            clock.now += POLICY_DB_CHECK_INTERVAL / 8
            assert client.get("/api/books").status_code == 429
    clock.now += POLICY_DB_CHECK_INTERVAL
    with django_assert_num_queries(1):  # the comparison: nothing changed, nothing reloaded
        for _ in range(6):
            assert client.get("/api/books").status_code == 429


class VersionTableLock:
    """Make this process's reads of the policy version fail, as with PostgreSQL gone.

    Another connection holds the table in ACCESS EXCLUSIVE mode and this one gives up waiting for
    a lock after 200 ms: the read raises a DatabaseError, as a dead database does after the pool's
    wait.
    """

    def __init__(self) -> None:
        self.holder = psycopg.connect(database_url().replace("postgres://", "postgresql://"))

    def hold(self) -> None:
        self.holder.execute("LOCK TABLE resilience_policyversion IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.holder.rollback()


@pytest.fixture
def version_table_lock(transactional_db: None) -> Iterator[VersionTableLock]:
    lock = VersionTableLock()
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")
    yield lock
    lock.release()
    lock.holder.close()
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = DEFAULT")


def test_an_unreadable_version_is_skipped_and_retried_later_without_stalling_requests(
    clock: Clock, version_table_lock: VersionTableLock, django_assert_num_queries: Callable[..., Any]
) -> None:
    policy = shut_policy()
    client = APIClient()
    assert client.get("/api/books").status_code == 429  # loaded before the database went away
    version_table_lock.hold()

    clock.now += POLICY_DB_CHECK_INTERVAL
    began = time.monotonic()
    assert client.get("/api/books").status_code == 429  # the comparison failed: served with what it had
    assert time.monotonic() - began < 1.0
    with django_assert_num_queries(0):  # backing off: no request pays for another try
        for _ in range(4):
            clock.now += POLICY_RELOAD_BACKOFF / 4
            assert client.get("/api/books").status_code == 429

    # The database is back, with a change whose Redis signal never came.
    version_table_lock.release()
    RateLimitPolicy.objects.filter(pk=policy.pk).update(enabled=False)
    PolicyVersion.bump()
    clock.now += POLICY_DB_CHECK_INTERVAL

    assert client.get("/api/books").status_code == 200


# --- (b) a failed signal: staff are told, and workers still converge ------------------------------


def test_a_change_told_through_redis_is_announced_in_force(transactional_db: None) -> None:
    policy = shut_policy()

    page = run_action(staff_client(), "disable", policy)

    assert "In force on every worker by" in page
    assert '<li class="warning">' not in page


def test_actions_and_the_reset_command_warn_when_redis_cannot_be_told(
    transactional_db: None, unreachable_redis: RedisServer
) -> None:
    policy = shut_policy()
    client = staff_client()

    assert_warned_of_lost_signal(run_action(client, "disable", policy))
    assert_warned_of_lost_signal(run_action(client, "reset_counters", policy))
    out, err = StringIO(), StringIO()
    call_command("ratelimit", "reset", policy.name, stdout=out, stderr=err)
    assert "reset 1 policy(ies)" in out.getvalue()
    assert "could not be told at once" in err.getvalue()
    assert "within 5 s" in err.getvalue()


@pytest.mark.live
def test_a_save_whose_signal_failed_warns_staff_and_a_live_worker_enforces_it_within_5_s(
    live_servers: Callable[..., LiveServer],
    redis_server: RedisServer,
    settings: Any,
    make_book: Callable[..., Book],
) -> None:
    book = make_book()
    path = f"/api/books/{book.pk}"
    policy = shut_policy(name="live-lost-signal", match_type="regex", pattern=f"^{path}$")
    server = live_servers(workers=2)
    assert {request(server.port, path).status for _ in range(8)} == {429}
    # The live workers' Redis, and the version counter they watch there.
    watched = redis.Redis.from_url(settings.REDIS_URL)
    version_key = f"{key_prefix()}resilience:policy-version"
    signalled_before = watched.get(version_key)

    # The staff member's process cannot reach its Redis: the change commits, the signal fails.
    settings.REDIS_URL = redis_server.url
    settings.CACHES = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_server.url}}
    reset_runtime()
    redis_server.stop()
    try:
        page = disable_in_change_form(staff_client(), policy)
        saved = time.monotonic()
    finally:
        reset_runtime()

    assert_warned_of_lost_signal(page)
    assert not RateLimitPolicy.objects.get(pk=policy.pk).enabled
    # Until BACKSTOP_SECONDS after the save, requests may still be refused; then every worker admits.
    while time.monotonic() < saved + BACKSTOP_SECONDS:
        assert request(server.port, path).status in (200, 429)
    probe = "after-backstop"
    for _ in range(20):
        replies = [request(server.port, path, headers={"X-Probe": probe}) for _ in range(4)]
        assert [r.status for r in replies] == [200] * 4
        if server.served_pids(probe) >= set(server.worker_pids()):
            break
    else:
        pytest.fail("not every worker answered after the backstop interval")
    assert watched.get(version_key) == signalled_before, "no Redis signal reached the live workers"
    watched.close()
