"""Redis behind Sentinel under real gunicorn: limits through the sentinels, and a failover without split writes.

Each test starts a primary, its replicas and three sentinels on loopback (real processes) and a
gunicorn of two workers configured with REDIS_SENTINELS only. A failover is what an operator runs:
SENTINEL FAILOVER. Simulated clients bind to their own 127.0.x.y address (per-IP limits).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from django.conf import settings

from accounts import token_cache
from accounts.models import User
from accounts.services import token_create, token_revoke_all
from catalog.models import Book
from resilience.http.bulkheads import slots_base
from resilience.models import RateLimitPolicy
from resilience.runtime import events_channel
from resilience.runtime.policies import compile_concurrency
from resilience.services import key_value_for, storage_key
from resilience.stores.redis_concurrency import RedisConcurrencyStore
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.accounts.test_token_cache import _hits as token_hits
from tests.conftest import make_concurrency
from tests.live import HOST, LiveServer, RedisServer, Reply, request
from tests.resilience.test_ratelimit_live import policy_quota

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

SERVICE = "mymaster"
LIMIT = 100
# Replication is asked to start at once (the default waits 5 s for more replicas to share a sync).
REPLICATION = ("--repl-diskless-sync-delay", "0")
_sources = (f"127.0.{n // 250 + 100}.{n % 250 + 1}" for n in itertools.count())


def new_source() -> str:
    return next(_sources)


@dataclass
class Cluster:
    """A primary, its replicas and three sentinels that monitor them."""

    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[RedisServer] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": "", "REDIS_SENTINELS": ",".join(f"{HOST}:{s.port}" for s in self.sentinels)}

    def primary(self) -> RedisServer:
        """Return the server that says it is the primary now."""
        for server in self.servers:
            client = server.client(decode_responses=True)
            try:
                if client.info("replication")["role"] == "master":
                    return server
            finally:
                client.close()
        raise AssertionError("no primary")

    def ready(self) -> bool:
        """Return whether every sentinel knows the replicas, and the replicas are in sync."""
        for sentinel in self.sentinels:
            client = sentinel.client(decode_responses=True)
            try:
                state = client.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            finally:
                client.close()
            # The others need not know each other yet: SENTINEL FAILOVER is one sentinel's decision,
            # and the rest learn its outcome from the primaries' hello channel.
            if int(state["num-slaves"]) != len(self.servers) - 1:
                return False
            # A sentinel promotes only a replica it has heard from and that follows the primary.
            client = sentinel.client(decode_responses=True)
            try:
                replicas = client.sentinel_slaves(SERVICE)
            finally:
                client.close()
            if not all(
                not r["is_disconnected"] and not r["is_sdown"] and r.get("master-link-status") == "ok" for r in replicas
            ):
                return False
        for replica in self.servers[1:]:
            client = replica.client(decode_responses=True)
            try:
                if client.info("replication").get("master_link_status") != "up":
                    return False
            finally:
                client.close()
        return True

    def failover(self) -> tuple[float, float, tuple[str, int]]:
        """Run SENTINEL FAILOVER; return (perf_counter() sent, perf_counter() announced, the new primary)."""
        subscriptions = []
        for sentinel in self.sentinels:
            pubsub = sentinel.client(decode_responses=True).pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe("+switch-master")
            subscriptions.append(pubsub)
        try:
            client = self.sentinels[0].client()
            sent = time.perf_counter()
            assert client.execute_command("SENTINEL FAILOVER", SERVICE), "the sentinel did not start a failover"
            client.close()
            deadline = sent + 10
            while time.perf_counter() < deadline:
                for pubsub in subscriptions:
                    message = pubsub.get_message(timeout=0.005)
                    if message is not None:
                        _, _, _, host, port = message["data"].split()
                        return sent, time.perf_counter(), (host, int(port))
            raise AssertionError("no +switch-master within 10 s")
        finally:
            for pubsub in subscriptions:
                pubsub.close()


# What README.md recommends for the primary (and so for every server, since any may be promoted):
# with fewer than one replica that acknowledged in the last 5 s, refuse writes rather than take
# counts a failover would discard. It needs two replicas: after a failover one is left at once.
MIN_REPLICAS = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "5")


@pytest.fixture
def clusters() -> Iterator[Callable[..., Cluster]]:
    """Return a factory of started clusters (replicas, more server arguments); all closed at teardown."""
    made: list[Cluster] = []

    def start(replicas: int = 1, args: tuple[str, ...] = ()) -> Cluster:
        cluster = Cluster()
        made.append(cluster)
        primary = RedisServer(args=(*REPLICATION, *args)).start()
        cluster.servers.append(primary)
        for _ in range(replicas):
            replica_args = ("--replicaof", HOST, str(primary.port), *REPLICATION, *args)
            cluster.servers.append(RedisServer(args=replica_args).start())
        conf = (
            f"sentinel monitor {SERVICE} {HOST} {primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        for _ in range(3):
            cluster.sentinels.append(RedisServer(conf=conf, args=("--sentinel",)).start())
        deadline = time.monotonic() + 20
        while not cluster.ready():
            assert time.monotonic() < deadline, "the sentinels did not find the replicas"
            time.sleep(0.05)
        return cluster

    try:
        yield start
    finally:
        for cluster in made:
            for server in [*cluster.sentinels, *cluster.servers]:
                server.close()


def limit_path(
    make_book: Callable[..., Book], name: str, limit: int = LIMIT, **fields: Any
) -> tuple[RateLimitPolicy, str]:
    """Create a per-IP limit per 60 s on one book's page; return it and the page."""
    book = make_book()
    policy = RateLimitPolicy(
        name=name, match_type="regex", pattern=f"^/api/books/{book.pk}$", key="ip", limit=limit, period=60, **fields
    )
    policy.full_clean()
    policy.save()
    return policy, f"/api/books/{book.pk}"


def admitted_of(port: int, path: str, source: str, count: int) -> int:
    """Send ``count`` requests from ``source`` one after another; return how many were admitted (200)."""
    replies = [request(port, path, source=source) for _ in range(count)]
    assert {r.status for r in replies} <= {200, 429}, [r.status for r in replies]
    return sum(r.status == 200 for r in replies)


class Load:
    """Threads sending requests from one client address until stopped; every reply kept with its end time."""

    def __init__(self, port: int, path: str, source: str, threads: int, pause: float) -> None:
        self.replies: list[tuple[float, Reply]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(port, path, source, pause), daemon=True) for _ in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, port: int, path: str, source: str, pause: float) -> None:
        while not self._stop.is_set():
            try:
                reply = request(port, path, source=source, timeout=5)
            except OSError as e:
                reply = Reply(status=599, headers={}, body=repr(e).encode(), seconds=0.0)
            self.replies.append((time.perf_counter(), reply))
            self._stop.wait(pause)


def test_limits_hold_across_a_sentinel_failover_under_load(
    clusters: Callable[..., Cluster], live_servers: Callable[..., LiveServer], make_book: Callable[..., Book]
) -> None:
    cluster = clusters(replicas=2, args=MIN_REPLICAS)
    policy, path = limit_path(make_book, "sentinel-load")
    server = live_servers(workers=2, env_overrides=cluster.env())
    old = cluster.primary()

    # Served through the sentinels: exact, and counted on the primary they name.
    assert admitted_of(server.port, path, new_source(), LIMIT + 5) == LIMIT, server.stderr_tail()
    assert old.keys(f"{settings.RESILIENCE_KEY_PREFIX}*")

    flood, paced, fresh = new_source(), new_source(), new_source()
    # The flood is over its limit long before the failover; the paced client is not: its
    # admissions are written while the replica is being promoted, the case that can lose some.
    with (
        Load(server.port, path, flood, threads=3, pause=0) as flooding,
        Load(server.port, path, paced, threads=4, pause=0.08) as pacing,
    ):
        time.sleep(0.5)
        sent, announced, new_address = cluster.failover()
        time.sleep(max(0.0, announced + 1.0 - time.perf_counter()))
        # Exact again 1 s after the switch: a fresh client gets exactly its limit.
        fresh_admitted = admitted_of(server.port, path, fresh, LIMIT + 5)
        assert fresh_admitted == LIMIT, server.stderr_tail()
    new = next(s for s in cluster.servers if s.port == new_address[1])
    assert new is not old

    replies = flooding.replies + pacing.replies
    assert {r.status for _, r in replies} <= {200, 429}, sorted({r.status for _, r in replies})
    assert sum(r.status == 200 for _, r in flooding.replies) == LIMIT
    admitted = sum(r.status == 200 for _, r in pacing.replies)
    # What async replication may lose: admissions the old primary decided after the replica
    # stopped following it and before the workers moved (when the sentinels announced it).
    in_window = sum(r.status == 200 for t, r in pacing.replies if sent <= t <= announced + 0.2)
    print(
        f"\nfailover: {admitted} admitted of {LIMIT} ({in_window} in the promotion window, "
        f"{sum(r.status == 200 for t, r in pacing.replies if t > announced + 0.2)} after it); "
        f"+switch-master {announced - sent:.2f} s after SENTINEL FAILOVER; {len(replies)} requests "
        f"in {max(t for t, _ in replies) - min(t for t, _ in replies):.1f} s, "
        f"the slowest {max(r.seconds for _, r in replies):.2f} s"
    )
    assert admitted <= LIMIT + in_window
    # Admissions wait while the replica is promoted: only one already sent when the sentinel said
    # so (at most one per client thread) can be counted on the old primary and lost.
    assert admitted <= LIMIT + 4
    # The fresh client was counted on the new primary only: no worker wrote to the old one.
    fresh_key = storage_key(policy, key_value_for(policy, fresh))
    assert new.keys(f"{fresh_key}*")
    assert not old.keys(f"{fresh_key}*")


def test_reset_and_policy_change_right_after_a_failover_are_not_lost(
    clusters: Callable[..., Cluster], live_servers: Callable[..., LiveServer], make_book: Callable[..., Book]
) -> None:
    cluster = clusters()
    policy, path = limit_path(make_book, "sentinel-reset")
    server = live_servers(workers=2, env_overrides=cluster.env())
    client = new_source()
    assert admitted_of(server.port, path, client, LIMIT + 10) == LIMIT  # refused from now on, remembered

    _, announced, new_address = cluster.failover()
    primary = redis.Redis(host=new_address[0], port=new_address[1], socket_timeout=2)
    RedisLimiterStore(primary, events_channel=events_channel()).reset(
        [storage_key(policy, key_value_for(policy, client))]
    )

    # Both workers serve the client its whole quota again: none still counts on the old primary.
    deadline = announced + 1.0
    while request(server.port, path, source=client).status != 200:
        assert time.perf_counter() < deadline, "the reset was not in force 1 s after the failover"
    print(f"\nreset in force {time.perf_counter() - announced:.2f} s after +switch-master")
    assert 1 + admitted_of(server.port, path, client, LIMIT + 5) == LIMIT

    # A policy change saved now is announced on the new primary, and every worker obeys it at once.
    policy.limit = 3
    policy.save()
    version_key = f"{settings.RESILIENCE_KEY_PREFIX}resilience:policy-version"
    RedisLimiterStore(primary, version_key, events_channel()).bump_version()
    changed = time.perf_counter()
    while policy_quota(request(server.port, path, source=new_source()), policy.name) != 3:
        assert time.perf_counter() - changed < 1, "the policy change was not in force within a second"


def test_a_hung_primary_is_not_trusted_for_more_than_a_second(
    redis_server: RedisServer, live_servers: Callable[..., LiveServer], make_book: Callable[..., Book]
) -> None:
    """A silent subscription may be hiding a reset: after a second of it, the worker asks Redis again."""
    policy, path = limit_path(make_book, "hung-primary", limit=5, on_store_failure="deny")
    # Redis retried soon after each failure: between failures, the worker's memory is what answers.
    server = live_servers(
        workers=1, env_overrides={"REDIS_URL": redis_server.url, "RESILIENCE_STORE_RETRY_SECONDS": "0.2"}
    )
    client = new_source()
    assert [request(server.port, path, source=client).status for _ in range(8)] == [200] * 5 + [429] * 3

    redis_server.pause()
    paused = time.perf_counter()
    try:
        seen: list[tuple[float, int]] = []
        while time.perf_counter() - paused < 2.5:
            seen.append((time.perf_counter() - paused, request(server.port, path, source=client).status))
    finally:
        redis_server.resume()
    resumed = time.perf_counter()

    # Refused from memory while the subscription could still be trusted, then Redis is asked, and
    # this policy's rule for a store that does not answer applies: never memory again meanwhile.
    first_unknown = next(t for t, status in seen if status == 503)
    assert first_unknown <= 1.3, seen
    assert all(status == 503 for t, status in seen if t >= first_unknown), seen

    # Back: a reset published now is in force within a second (heard, or nothing is remembered).
    store = RedisLimiterStore(redis_server.client(), events_channel=events_channel())
    while request(server.port, path, source=client).status != 429:
        assert time.perf_counter() - resumed < 3, "Redis was not asked again after it came back"
    store.reset([storage_key(policy, key_value_for(policy, client))])
    reset_at = time.perf_counter()
    while request(server.port, path, source=client).status != 200:
        assert time.perf_counter() - reset_at < 1, "the reset was not in force within a second"


def test_bulkheads_take_and_give_back_their_slots_through_the_sentinels(
    clusters: Callable[..., Cluster], live_servers: Callable[..., LiveServer], make_book: Callable[..., Book]
) -> None:
    cluster = clusters(replicas=1)
    path = f"/api/books/{make_book().pk}"
    # Fail closed: a worker that cannot reach the shared slots refuses instead of counting alone.
    policy = make_concurrency(
        name="sentinel-slots", match_type="prefix", pattern=path, key="global", max_in_flight=2, on_store_failure="deny"
    )
    server = live_servers(workers=2, env_overrides=cluster.env())

    replies = [request(server.port, path) for _ in range(5)]

    assert [reply.status for reply in replies] == [200] * 5, [r.body[:200] for r in replies]
    # Every slot was taken on the primary the sentinels name, and given back there.
    primary = cluster.primary().client()
    try:
        assert RedisConcurrencyStore(primary).status(slots_base(compile_concurrency(policy), "all"))[0] == 0
        assert primary.keys(f"{settings.RESILIENCE_KEY_PREFIX}*")
    finally:
        primary.close()


def test_tokens_are_remembered_and_revoked_through_the_sentinels(
    clusters: Callable[..., Cluster], live_servers: Callable[..., LiveServer], customer: User
) -> None:
    cluster = clusters(replicas=1)
    server = live_servers(workers=1, env_overrides=cluster.env())
    headers = {"Authorization": f"Token {token_create(user=customer).token}"}

    # Remembered once the worker's subscription, made through the sentinels, listens.
    deadline = time.monotonic() + 30
    while token_hits(server) < 2:
        assert request(server.port, "/api/accounts/me", headers=headers).status == 200
        assert time.monotonic() < deadline, "the worker never answered the token from memory"
    revoked_at = time.monotonic()
    token_revoke_all(user=customer)  # this process has no sentinels: its own announcement goes elsewhere
    primary = cluster.primary().client()
    try:
        primary.publish(token_cache.channel(), str(customer.pk))  # as the fleet's processes announce it
    finally:
        primary.close()
    while request(server.port, "/api/accounts/me", headers=headers).status != 401:
        assert time.monotonic() - revoked_at < 1, "the revocation was not heard within a second"
