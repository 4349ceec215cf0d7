"""Per-process state of the resilience layer: the policy snapshot and the stores behind it.

One Runtime per worker process. The shared store is Redis (through django-redis's connection, whose
timeouts bound every call) when REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES is set, else an
in-process store. On a cluster, admissions go through stores/cluster.py. Behind Sentinel, the
runtime follows each failover at once (sentinel.py). When Redis fails, the runtime answers from an
in-process fallback store and stays off Redis for RESILIENCE_STORE_RETRY_SECONDS, so a dead Redis
costs one timeout per worker per interval, not one per request.

A worker learns of policy changes from Redis's version counter (each admission returns it) and,
as a backstop that does not depend on Redis, from PolicyVersion in PostgreSQL, compared every
POLICY_DB_CHECK_INTERVAL seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from time import time as wall_clock

from django.conf import settings
from django.db import DatabaseError
from redis.cluster import RedisCluster
from redis.sentinel import SentinelConnectionPool

from resilience.engine.breaker import BreakerConfig, BreakerStore, Transition
from resilience.engine.limiter import LimitSpec, StoreDataError, StoreUnavailable
from resilience.models import PolicyVersion
from resilience.ops.metrics import store_errors
from resilience.runtime.adaptive import AdaptiveLimits
from resilience.runtime.errors import PolicyErrorLog
from resilience.runtime.outcomes import SuccessBatch
from resilience.runtime.policies import BREAKER, PolicyError, PolicySet, compile_policies
from resilience.runtime.refusals import KnownRefusals
from resilience.runtime.tally import LimitedTally
from resilience.stores import keys as keyspace
from resilience.stores.admission import Admission, MemoryAdmission, RedisAdmission
from resilience.stores.boundary import store_call
from resilience.stores.cluster import ClusterAdmission
from resilience.stores.memory_breaker import MemoryBreakerStore
from resilience.stores.memory_concurrency import MemoryConcurrencyStore
from resilience.stores.memory_limiter import MemoryLimiterStore
from resilience.stores.redis_concurrency import RedisConcurrencyStore, SlotRequest
from resilience.stores.sentinel import FailoverWatch
from resilience.stores.subscription import connection_factory

log = logging.getLogger("resilience")

# How often a worker that saw no admission round trip checks the version counter (seconds).
VERSION_CHECK_INTERVAL = 1.0
# How often a worker compares the policy version in PostgreSQL, the backstop for a lost Redis
# signal (seconds): one indexed single-row query per worker per interval, never one per request.
# While Redis is unreachable it is the only signal, and is compared every VERSION_CHECK_INTERVAL.
POLICY_DB_CHECK_INTERVAL = 4.0
# What staff are promised when the Redis signal failed: the change is in force on every worker
# within this long (seconds); the second above the check interval covers the reload.
POLICY_BACKSTOP_SECONDS = 5
# The version of a snapshot loaded without reading Redis's counter: never equal to a real one
# (the counter starts at 0), so the first real version a worker reads makes it reload.
UNKNOWN_VERSION = -1
# After the database failed a policy reload, wait this much longer before trying again (seconds).
POLICY_RELOAD_BACKOFF = 5.0
# How often a worker serving requests reports the policy version it serves them under, for the
# dashboard (seconds). It also reports at once whenever it loads a version.
HEARTBEAT_INTERVAL = 10.0
# A worker that reported within this long counts as live when the fleet's fallback shares are made.
# Longer than HEARTBEAT_INTERVAL: a worker idle for a while may serve again during an outage, and
# counting one that is gone only makes the shares smaller, never the fleet's total larger.
LIVE_WORKER_SECONDS = 60.0


def redis_configured() -> bool:
    """Return whether a Redis is configured (a URL, sentinels to ask for the primary, or cluster nodes)."""
    return bool(
        settings.REDIS_URL
        or getattr(settings, "REDIS_SENTINELS", None)
        or getattr(settings, "REDIS_CLUSTER_NODES", None)
    )


def key_prefix() -> str:
    return getattr(settings, "RESILIENCE_KEY_PREFIX", "")


def events_channel() -> str:
    """Return the channel breaker resets, forced states, rate-limit resets and policy changes are published on."""
    return keyspace.events_channel(key_prefix())


def live_workers(reports: Iterable[bytes | str], now: float) -> int:
    """Count the workers whose last report (JSON with its wall-clock "at") is recent enough to be live."""
    count = 0
    for raw in reports:
        try:
            at = json.loads(raw)["at"]
        except (ValueError, TypeError, KeyError):
            continue  # a record this version cannot read is not a live worker of it
        if isinstance(at, (int, float)) and now - at <= LIVE_WORKER_SECONDS:
            count += 1
    return count


def fleet_shares(specs: Sequence[LimitSpec], workers: int) -> list[LimitSpec] | Sequence[LimitSpec]:
    """Return ``specs`` with each limit (and burst) divided among ``workers``, so the fleet's total stays within it.

    Rounded down, but never below 1 request: a limit smaller than the fleet admits one per worker.
    """
    if workers <= 1:
        return specs

    def share(value: int) -> int:
        return value and max(1, value // workers)

    return [
        spec._replace(limit=share(spec.limit), burst=None if spec.burst is None else share(spec.burst))
        for spec in specs
    ]


def _announce(transitions: list[Transition]) -> None:
    from resilience.http.guards import announce  # the guards' log, metrics and signal; they import this module

    announce(transitions)


def workers_key() -> str:
    """Return the Redis hash where each worker reports what it serves requests under (Runtime.heartbeat)."""
    return keyspace.workers_key(key_prefix())


class Runtime:
    """Hold the current PolicySet and decide through the shared store or the fallback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: PolicySet | None = None
        self._checked_at = 0.0
        self._down_until = 0.0
        # The PostgreSQL policy version the snapshot was loaded at (None: not known), and when
        # this worker last compared it; one thread compares at a time, the others do not wait.
        self._db_version: int | None = None
        self._db_checked_at = 0.0
        # When (unix time) this worker first loaded the PostgreSQL policy version it enforces.
        self._loaded_wall: float | None = None
        self._db_check_lock = threading.Lock()
        self.fallback = MemoryLimiterStore()
        self.shared = self._make_shared_store()
        self.breaker_fallback = MemoryBreakerStore()
        self.breaker_shared = self._make_breaker_store()
        self.fallback_admission = MemoryAdmission(self.fallback, self.breaker_fallback)
        # Bulkhead slots (resilience/http/bulkheads.py): leases in Redis, or counted in process.
        self.concurrency_fallback = MemoryConcurrencyStore()
        self.concurrency_shared = self._make_concurrency_store()
        self._shared_admission: RedisAdmission | ClusterAdmission | MemoryAdmission | None = None
        self._beat_at = 0.0
        # The fleet's live workers, from their reports; divides limits while Redis is unreachable.
        self.fleet_workers: int = settings.RESILIENCE_FALLBACK_WORKERS
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._known_refusals: KnownRefusals | None = None
        self._failover_watch: FailoverWatch | None = None
        if self.uses_redis:
            pool = getattr(self.shared.client, "connection_pool", None)  # type: ignore[attr-defined]
            if isinstance(pool, SentinelConnectionPool):
                self._failover_watch = FailoverWatch(
                    pool, self.primary_changed, settings.RESILIENCE_STORE_RETRY_SECONDS
                )
        # Not self._lock: the database breaker asks for it while a policy reload holds that lock.
        self._hints_lock = threading.Lock()
        # Dashboard counts of refusals made from memory; kept only where the admission keeps stats.
        self.tally: LimitedTally | None = None
        if self.uses_redis and key_prefix():
            self.tally = LimitedTally(lambda: self.shared.client, key_prefix())  # type: ignore[attr-defined]  # uses_redis: the shared store is the Redis one
        # Successes of calls closed breakers admitted, reported in batches (outcomes.py).
        self.breaker_successes = SuccessBatch(
            lambda: self.breaker_shared,  # type: ignore[arg-type,return-value]  # only used with the Redis store
            lambda operation, error, name: self.store_failed(operation, error, "record", [(BREAKER, name)]),
            _announce,
        )
        # Adaptive concurrency limits (adaptive.py), shared through Redis when there is one.
        self.adaptive = AdaptiveLimits(
            lambda: self.shared.client if self.store_available() else None,  # type: ignore[attr-defined]  # Redis store
            key_prefix(),
            lambda operation, error: self.store_failed(operation, error),
        )
        # Policies this worker could not use: counted, logged, and recorded for the admin and dashboard.
        self.policy_errors = PolicyErrorLog(
            (lambda: self.shared.client) if self.uses_redis else None,  # type: ignore[attr-defined]  # Redis store
            key_prefix(),
        )

    def close(self) -> None:
        """Stop this runtime's subscription (a runtime dropped for a new one must not keep a connection)."""
        with self._hints_lock:
            known, self._known_refusals = self._known_refusals, None
        if known is not None:
            known.close()
        if self._failover_watch is not None:
            self._failover_watch.close()
        self.breaker_successes.close()
        self.adaptive.close()

    @property
    def uses_redis(self) -> bool:
        return self.shared is not self.fallback

    def _make_shared_store(self) -> MemoryLimiterStore:
        if not redis_configured():
            return self.fallback
        from django_redis import get_redis_connection

        from resilience.stores.redis_limiter import RedisLimiterStore

        return RedisLimiterStore(  # type: ignore[return-value]  # answers every call the memory store does
            get_redis_connection("default"),
            version_key=keyspace.version_key(key_prefix()),
            events_channel=events_channel(),
        )

    def _make_breaker_store(self) -> BreakerStore:
        if not redis_configured():
            return self.breaker_fallback
        from django_redis import get_redis_connection

        from resilience.stores.redis_breaker import RedisBreakerStore

        return RedisBreakerStore(
            get_redis_connection("default"),
            prefix=keyspace.breaker_prefix(key_prefix()),
            events_channel=events_channel(),
        )

    def _make_concurrency_store(self) -> RedisConcurrencyStore | None:
        if not redis_configured():
            return None
        from django_redis import get_redis_connection

        return RedisConcurrencyStore(get_redis_connection("default"))

    def known_refusals(self) -> KnownRefusals | None:
        """Return what this process knows Redis refuses (open breakers, limited keys), or None without Redis."""
        if self._failover_watch is not None:
            self._failover_watch.ensure()
        if not self.store_available():
            return None
        current = self._known_refusals
        if current is None:
            # A client that cannot open a connection of its own gets no memory of refusals:
            # every call asks the store.
            connect = connection_factory(self.shared.client)  # type: ignore[attr-defined]  # Redis store
            if connect is None:
                return None
            with self._hints_lock:
                if self._known_refusals is None:
                    # Its own connection, outside the pool: the pool counts every connection it
                    # makes, so taking one from it per reconnect would leak a slot each time.
                    self._known_refusals = KnownRefusals(
                        connect,
                        events_channel(),
                        settings.RESILIENCE_STORE_RETRY_SECONDS,
                    )
                current = self._known_refusals
        return current

    def breaker_store(self) -> tuple[BreakerStore, bool]:
        """Return the breaker store to use now and whether it is the per-process fallback."""
        if self.store_available():
            return self.breaker_shared, False
        return self.breaker_fallback, self.uses_redis

    def heartbeat(self) -> None:
        """Report to the dashboard the policy version this worker serves requests under (one HSET).

        Only ever called while serving a request, after its checks for changes: at most every
        HEARTBEAT_INTERVAL, and at once when a reload loads a version. So "at" is a moment this
        worker served a request under "version" (the PostgreSQL policy version, which every change
        bumps, even one whose Redis signal was lost), and "loaded_at" is when it first enforced it.
        Hearing a change announced on the events channel (refusals.py) is no reason to report: the
        worker has not loaded it yet, and loads it before its next request anyway.
        """
        self._beat_at = time.monotonic()
        if not self.store_available():
            return
        now = wall_clock()
        record = json.dumps({"version": self._db_version, "loaded_at": self._loaded_wall, "at": now})
        client = self.shared.client  # type: ignore[attr-defined]  # store_available(): the Redis store

        def report() -> list[bytes]:
            # The report and the fleet's reports in one round trip.
            pipe = client.pipeline(transaction=False)
            pipe.hset(workers_key(), self.worker_id, record)
            pipe.hvals(workers_key())
            return pipe.execute()[1]  # type: ignore[no-any-return]  # redis-py types replies as Any

        try:
            reports = store_call("heartbeat", report)
        except StoreUnavailable as e:  # the dashboard's view is never worth a failed request
            watch = self._failover_watch
            if watch is not None and watch.settling(e):
                return  # a new primary still waiting for its replica: not down, the next beat tells
            self.store_failed("heartbeat", e)
            return
        # Never below the configured floor: a worker reporting first at start-up finds only itself.
        self.fleet_workers = max(settings.RESILIENCE_FALLBACK_WORKERS, live_workers(reports, now))

    # --- store health --------------------------------------------------------------------
    def store_available(self) -> bool:
        return self.uses_redis and time.monotonic() >= self._down_until

    def mark_down(self, operation: str, error: Exception) -> None:
        store_errors.labels(operation).inc()
        self._down_until = time.monotonic() + settings.RESILIENCE_STORE_RETRY_SECONDS
        # What Redis said before it failed may not hold when it is back (a restart lost the keys,
        # a failover promoted a replica that never saw them, a reset was published meanwhile).
        self.forget_refusals()
        log.warning(
            "resilience store unavailable",
            extra={"event": "store_error", "operation": operation, "error": repr(error)},
        )

    def store_failed(
        self, operation: str, error: Exception, stage: str = "", policies: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Handle a failed store call: the store is given up for a while, unless only this call's data was at fault.

        A StoreDataError (a script or data error: the store answered) is counted and reported
        against ``policies`` ((kind, name) pairs) at ``stage``; the other requests keep the store.
        """
        if not isinstance(error, StoreDataError):
            self.mark_down(operation, error)
            return
        store_errors.labels(operation).inc()
        reported = [PolicyError(kind, name, stage or operation, str(error)) for kind, name in policies]
        if reported:
            self.policy_errors.report(reported)
        else:
            log.warning(
                "resilience store refused an operation",
                extra={"event": "store_error", "operation": operation, "error": repr(error)},
            )

    # --- policy snapshot -----------------------------------------------------------------
    def snapshot(self) -> PolicySet:
        """Return the current policies, reloading them when a change is seen or overdue."""
        current = self._snapshot
        now = time.monotonic()
        if current is not None and now - self._db_checked_at >= self._db_check_interval():
            current = self._compare_database(now)
        if current is None or now - self._checked_at >= VERSION_CHECK_INTERVAL:
            current = self._compare_counter(current, now)
        # After the checks, never before: the version reported is the one this request is served under.
        if now - self._beat_at >= HEARTBEAT_INTERVAL:
            self.heartbeat()
        return current

    def _compare_counter(self, current: PolicySet | None, now: float) -> PolicySet:
        """Reload if Redis's version counter moved since the snapshot was loaded (or nothing is loaded)."""
        # Without a reachable shared counter there is nothing to compare here: never guess a
        # number a real change could take later; the database comparison stands in.
        version = UNKNOWN_VERSION
        if self.store_available():
            try:
                version = self.shared.version()
            except StoreUnavailable as e:
                self.store_failed("version", e)
        if current is None or (version != UNKNOWN_VERSION and version != current.version):
            current = self.reload(version)
        # Only now: until the reload is done, other threads must keep checking, not serve the
        # old policies under a fresh timestamp.
        self._checked_at = now
        return current

    def _db_check_interval(self) -> float:
        return POLICY_DB_CHECK_INTERVAL if self.store_available() else VERSION_CHECK_INTERVAL

    def _compare_database(self, now: float) -> PolicySet | None:
        """Reload if the policy version in PostgreSQL moved since the snapshot was loaded."""
        current = self._snapshot
        if current is None or not self._db_check_lock.acquire(blocking=False):
            return current  # another thread is comparing: serve what we have meanwhile
        try:
            self._db_checked_at = now
            try:
                db_version = PolicyVersion.current()
            except DatabaseError as e:
                # PostgreSQL is unreachable: keep enforcing what we knew and back off, so one
                # request per worker per POLICY_RELOAD_BACKOFF pays the pool's wait, not every one.
                log.error("cannot read the policy version", extra={"event": "policy_load_error", "error": repr(e)})
                self._db_checked_at = now + POLICY_RELOAD_BACKOFF
                return current
            if db_version == self._db_version:
                return current
            return self.reload(current.version, db_version=db_version)
        finally:
            self._db_check_lock.release()

    def loaded(self) -> PolicySet | None:
        """Return the policies as last loaded, never reloading (None before the first load)."""
        return self._snapshot

    def observe_version(self, version: int) -> None:
        """Learn the policy version from an admission round trip; reload if it moved."""
        current = self._snapshot
        if current is not None and version != current.version:
            self.reload(version)
        self._checked_at = time.monotonic()

    def reload(self, version: int, db_version: int | None = None) -> PolicySet:
        """Load the policies as of Redis counter ``version`` (and PostgreSQL ``db_version``, if read)."""
        policies, loaded = self._load(version, db_version)
        if loaded:
            # At once, outside the lock: the dashboard learns the new version with the request that
            # loaded it, not a heartbeat interval later (a reload is rare: one HSET is nothing).
            self.heartbeat()
        return policies

    def _load(self, version: int, db_version: int | None) -> tuple[PolicySet, bool]:
        """Return the policies to serve under, and whether this call loaded them."""
        with self._lock:
            current = self._snapshot
            if (
                current is not None
                and current.version == version
                and (db_version is None or db_version == self._db_version)
            ):
                return current, False  # another thread loaded it meanwhile
            try:
                # Read before loading: a change committed in between is then seen at the next compare.
                loaded_at = PolicyVersion.current() if db_version is None else db_version
                self._snapshot = compile_policies(version)
                if loaded_at != self._db_version or self._loaded_wall is None:
                    self._loaded_wall = wall_clock()  # taken after the read: never before the change
                self._db_version = loaded_at
                self._db_checked_at = time.monotonic()
                self.forget_refusals()  # a policy may have changed or gone
                if self._snapshot.errors:
                    self.policy_errors.report(self._snapshot.errors)
            except DatabaseError as e:
                # PostgreSQL is unreachable: keep enforcing what we knew (nothing, at start-up)
                # and try again at the next interval rather than failing every request.
                log.error("cannot load resilience policies", extra={"event": "policy_load_error", "error": repr(e)})
                # Back off: while PostgreSQL is down, one request per worker per interval pays
                # the pool's wait for this, not every request. Its heartbeats keep reporting the
                # version it still serves under: behind, once another worker has the change.
                self._checked_at = time.monotonic() + POLICY_RELOAD_BACKOFF
                return (current if current is not None else PolicySet(version=UNKNOWN_VERSION)), False
            return self._snapshot, True

    def invalidate(self) -> None:
        """Forget the snapshot (tests and in-process changes)."""
        with self._lock:
            self._snapshot = None
            self._checked_at = 0.0
            self.forget_refusals()

    # --- limits ----------------------------------------------------------------------------
    def shared_admission(self) -> RedisAdmission | ClusterAdmission | MemoryAdmission:
        """Return the admission of the shared store (the in-process one without Redis)."""
        current = self._shared_admission
        if current is None or current.limiter is not self.shared or current.breakers is not self.breaker_shared:
            client = getattr(self.shared, "client", None)
            if isinstance(client, RedisCluster):
                current = ClusterAdmission(
                    self.shared,  # type: ignore[arg-type]  # a cluster client: the Redis stores
                    self.breaker_shared,  # type: ignore[arg-type]  # likewise
                    self.concurrency_shared,
                    count=self.tally.add_outcomes if self.tally is not None else None,
                )
            elif self.uses_redis:
                current = RedisAdmission(
                    self.shared,  # type: ignore[arg-type]  # uses_redis: the Redis stores
                    self.breaker_shared,  # type: ignore[arg-type]  # likewise
                    stats_prefix=key_prefix(),
                )
            else:
                # The same in-process admission as the fallback: the dashboard reads its stats.
                current = self.fallback_admission
            self._shared_admission = current
        return current

    def admit(
        self,
        specs: Sequence[LimitSpec],
        breakers: Sequence[BreakerConfig],
        labels: Sequence[str] | None = None,
        policies: Sequence[tuple[str, str]] = (),
        slots: Sequence[SlotRequest] = (),
    ) -> tuple[Admission, bool]:
        """Decide limits and breakers; return (admission, from_fallback).

        The shared store answers in one round trip; while it is unavailable the in-process
        stores answer instead (from_fallback=True) and the caller applies each policy's rule
        for store failures. So does a round trip the store refused (a script or data error):
        for this request only, reported against ``policies`` ((kind, name) of each one asked).
        ``slots`` get a first try in the same round trip (Redis only; see resilience/http/bulkheads.py).
        """
        if self.store_available() or not self.uses_redis:
            watch = self._failover_watch
            if watch is not None:
                watch.wait_for_primary()  # a count made during a promotion would be lost
            while True:
                try:
                    admission = self.shared_admission().admit(specs, breakers, labels=labels, slots=slots)
                except StoreUnavailable as e:
                    if watch is not None and watch.settling(e):
                        continue  # the new primary's replica is catching up: tens of milliseconds
                    self.store_failed("admit", e, "admit", policies)
                    break
                self.observe_version(admission.hit.version)
                return admission, False
        return self.fallback_admission.admit(fleet_shares(specs, self.fleet_workers), breakers, labels=labels), True

    def reset_limits(self, keys: Sequence[str]) -> None:
        """Clear limit keys in both stores; every worker forgets it refused them (this one at once)."""
        self.shared.reset(keys)
        self.fallback.reset(keys)
        self.forget_refusals()

    def primary_changed(self) -> None:
        """Follow a new Redis primary: forget the refusals and subscribe there; compare policy versions now.

        Called by the failover watch once the pool points at the new primary. A policy change or
        a reset written to the old primary just before it was demoted may be lost with it: the
        PostgreSQL version, compared at the next request, still finds the change.
        """
        known = self._known_refusals
        if known is not None:
            known.restart()
        self._checked_at = 0.0
        self._db_checked_at = 0.0

    def forget_refusals(self) -> None:
        """Forget what this process remembered Redis refusing (the others hear it published)."""
        if self._known_refusals is not None:
            self._known_refusals.forget()

    def bump_version(self) -> str | None:
        """Tell every worker the policies changed (called after commit); return why it failed, or None.

        A failed signal loses no change: every worker finds it in PostgreSQL within
        POLICY_DB_CHECK_INTERVAL. The caller tells the staff member which of the two happened.
        """
        try:
            self.shared.bump_version()
        except StoreUnavailable as e:
            self.store_failed("bump_version", e)
            return str(e)
        finally:
            self.invalidate()
        return None


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """Return this process's Runtime, creating it on first use."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = Runtime()
    return _runtime


def reset_runtime() -> None:
    """Drop the process's Runtime so the next request builds a new one (tests, settings changes)."""
    global _runtime
    with _runtime_lock:
        dropped, _runtime = _runtime, None
    if dropped is not None:
        dropped.close()
