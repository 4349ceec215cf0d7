"""Bulkheads: at most N matched requests (or code blocks) in flight at once across the fleet.

Rate limits count requests per period and breakers react after failures; neither stops a pile-up
of slow calls that are each within their rate. A concurrency policy hands out N slots per key as
leases in Redis (lua/concurrency.lua): a request takes one before the view runs and gives it back
on the way out, response or exception. A worker killed while holding slots cannot give them back:
each lease expires after the policy's ``lease_seconds``, by Redis's clock.

A request that finds every slot taken waits up to ``max_wait_ms`` for one, queued in arrival
order across the fleet (a ticket sorted set), polling with short sleeps; then it is refused with
503 (``…/concurrency-limit``, ``Retry-After``). While Redis is unreachable each worker keeps its
share of the slots in process (N divided by the fleet's live workers, at least 1), or refuses
(``on_store_failure`` deny).

`with bulkhead("search-db"):` / `@bulkhead("search-db")` guard code with the policy of that name
(match type "code"); when no enabled policy has the name, the guard lets everything through.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Sequence
from contextlib import ContextDecorator
from typing import Any

from bookstore.exceptions import ApplicationError
from resilience.engine.limiter import StoreUnavailable
from resilience.ops.metrics import concurrency_decisions, concurrency_in_flight, concurrency_wait_seconds
from resilience.runtime import Runtime, get_runtime, key_prefix
from resilience.runtime.policies import CONCURRENCY, ConcurrencyRule
from resilience.stores import keys as keyspace
from resilience.stores.redis_concurrency import Attempt, SlotRequest

# What a refused client is told to wait: slots turn over as fast as requests finish.
RETRY_AFTER_SECONDS = 1
# Sleep between tries while queued: longer the further back in the queue, so a long queue does not
# turn into a storm of round trips; the head of the queue tries again within about 10 ms.
POLL_FIRST_SECONDS = 0.005
POLL_PER_WAITER_SECONDS = 0.005
POLL_MAX_SECONDS = 0.1


class ConcurrencyLimited(ApplicationError):
    """Every slot of a concurrency policy is taken (or its store is down and it fails closed)."""

    status_code = 503
    slug = "concurrency-limit"
    title = "Too many requests in progress"

    def __init__(self, name: str, *, waited_ms: int = 0, store_down: bool = False) -> None:
        if store_down:
            detail = f"The {name} concurrency limit's store is unreachable and it fails closed; retry shortly."
        elif waited_ms:
            detail = f"Every slot of {name} stayed taken for {waited_ms} ms; retry in {RETRY_AFTER_SECONDS} s."
        else:
            detail = f"Every slot of {name} is taken; retry in {RETRY_AFTER_SECONDS} s."
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, policy=name)
        self.name = name


def slots_base(rule: ConcurrencyRule, value: str) -> str:
    """Return the Redis key stem of one counted value of a policy (its three keys share the hash tag)."""
    return policy_base(rule.id, value)


def policy_base(policy_id: int, value: str) -> str:
    return keyspace.slots_base(key_prefix(), policy_id, value)


def counted_value(base: str) -> str:
    """Return what a slots base counts by: what follows the policy id in "...cc:{<id>:<value>}"."""
    return keyspace.slots_counted_value(base)


def policy_pattern(policy_id: int) -> str:
    """Return the SCAN pattern of every slot set of a policy."""
    return keyspace.slots_pattern(key_prefix(), policy_id)


def fallback_limit(runtime: Runtime, rule: ConcurrencyRule) -> int:
    """Return the slots this worker may hand out in process: all of them without Redis, else its share."""
    limit = runtime.adaptive.limit(rule)
    if not runtime.uses_redis:
        return limit
    return max(1, limit // max(1, runtime.fleet_workers))


class Slot:
    """One held slot (or, in a dry run, one counted call): give it back exactly once."""

    __slots__ = ("runtime", "rule", "base", "lease_id", "shared", "released", "taken_at")

    def __init__(self, runtime: Runtime, rule: ConcurrencyRule, base: str, lease_id: str, shared: bool) -> None:
        self.runtime = runtime
        self.rule = rule
        self.base = base
        self.lease_id = lease_id
        self.shared = shared
        self.released = False
        self.taken_at = time.monotonic()
        concurrency_in_flight.labels(rule.name).inc()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        concurrency_in_flight.labels(self.rule.name).dec()
        self.runtime.adaptive.finished(self.rule, time.monotonic() - self.taken_at)
        if not self.shared:
            self.runtime.concurrency_fallback.release(self.base)
            return
        try:
            _, held = self.runtime.concurrency_shared.release(self.base, self.lease_id)  # type: ignore[union-attr]  # shared: set
        except StoreUnavailable as e:
            # The lease expires by itself within lease_seconds.
            self.runtime.store_failed("concurrency_release", e, "release", [(CONCURRENCY, self.rule.name)])
            return
        if not held:
            # The call outlived its lease: another was let in meanwhile. Staff raise lease_seconds.
            _count(self.rule, "lease_expired")


def _count(rule: ConcurrencyRule, outcome: str) -> None:
    concurrency_decisions.labels(rule.name, outcome).inc()


def slot_request(rule: ConcurrencyRule, value: str, limit: int) -> SlotRequest:
    """Return the first try for a slot of ``rule`` for counted ``value`` (made in the admission round trip).

    ``limit``: the slots it may have now (max_in_flight, or an adaptive policy's current limit).
    """
    return SlotRequest(
        base=slots_base(rule, value),
        lease_id=uuid.uuid4().hex,
        limit=limit,
        lease_seconds=rule.lease_seconds,
        # A dry run only counts: it never waits and always gets its (counted) slot.
        wait_ms=rule.max_wait_ms if rule.enforce else 0,
        force=not rule.enforce,
    )


def acquire(
    runtime: Runtime, rule: ConcurrencyRule, value: str, first: tuple[SlotRequest, Attempt | None] | None = None
) -> Slot:
    """Take a slot of ``rule`` for counted ``value``, waiting up to max_wait_ms; raise ConcurrencyLimited if none.

    ``first`` is a try already made (its request, and its answer or None), in the admission round trip.
    """
    request, attempt = first if first is not None else (slot_request(rule, value, runtime.adaptive.limit(rule)), None)
    limit = request.limit  # the limit it was asked under: a later try in the same wait keeps to it
    base, lease_id = request.base, request.lease_id
    started = time.monotonic()
    deadline = started + request.wait_ms / 1000
    waited = False
    store = runtime.concurrency_shared
    while store is not None and (attempt is not None or runtime.store_available()):
        if attempt is None:
            left_ms = int((deadline - time.monotonic()) * 1000)
            try:
                attempt = store.acquire(base, lease_id, limit, rule.lease_seconds, left_ms, force=request.force)
            except StoreUnavailable as e:
                runtime.store_failed("concurrency", e, "admit", [(CONCURRENCY, rule.name)])
                if waited:
                    _release_quietly(runtime, base, lease_id)
                break
        if attempt.acquired:
            return _admitted(runtime, rule, base, lease_id, True, attempt.full, started, waited)
        if attempt.ahead < 0 or time.monotonic() >= deadline:
            if waited:
                _release_quietly(runtime, base, lease_id)  # give up the place in the queue
            raise _refused(rule, started, waited)
        waited = True
        pause = min(POLL_MAX_SECONDS, POLL_FIRST_SECONDS + POLL_PER_WAITER_SECONDS * attempt.ahead)
        time.sleep(max(0.0, min(deadline - time.monotonic(), pause * random.uniform(0.8, 1.2))))  # noqa: S311 - jitter
        attempt = None
    if runtime.uses_redis and not rule.fail_open:
        _count(rule, "store_error")
        raise ConcurrencyLimited(rule.name, store_down=True)
    timeout = max(0.0, deadline - time.monotonic())
    acquired, full = runtime.concurrency_fallback.acquire(
        base, fallback_limit(runtime, rule), timeout, force=not rule.enforce
    )
    waited = waited or (full and rule.enforce and rule.max_wait_ms > 0)
    if not acquired:
        raise _refused(rule, started, waited)
    if runtime.uses_redis:
        _count(rule, "store_error")
    return _admitted(runtime, rule, base, lease_id, False, full, started, waited, counted=not runtime.uses_redis)


def _admitted(
    runtime: Runtime,
    rule: ConcurrencyRule,
    base: str,
    lease_id: str,
    shared: bool,
    full: bool,
    started: float,
    waited: bool,
    counted: bool = True,
) -> Slot:
    if waited:
        concurrency_wait_seconds.labels(rule.name).observe(time.monotonic() - started)
    if counted:
        if full and not rule.enforce:
            _count(rule, "dry_run_would_refuse")
        else:
            _count(rule, "admitted_after_wait" if waited else "admitted")
    return Slot(runtime, rule, base, lease_id, shared)


def _refused(rule: ConcurrencyRule, started: float, waited: bool) -> ConcurrencyLimited:
    waited_ms = int((time.monotonic() - started) * 1000) if waited else 0
    if waited:
        concurrency_wait_seconds.labels(rule.name).observe(time.monotonic() - started)
    _count(rule, "refused_after_wait" if waited else "refused")
    return ConcurrencyLimited(rule.name, waited_ms=waited_ms)


def _release_quietly(runtime: Runtime, base: str, lease_id: str) -> None:
    store = runtime.concurrency_shared
    if store is None:
        return
    with contextlib.suppress(StoreUnavailable):  # else the ticket expires just after its deadline
        store.release(base, lease_id)


def acquire_all(
    runtime: Runtime,
    rules: Sequence[tuple[ConcurrencyRule, str]],
    requests: Sequence[SlotRequest] = (),
    attempts: Sequence[Attempt] = (),
) -> list[Slot]:
    """Take a slot of every rule, in order; on a refusal give back those already taken and raise.

    ``requests`` (one per rule) and their ``attempts`` are the first tries the admission round trip
    made (fewer attempts than requests when it stopped early): each is carried on, not repeated.
    """
    slots: list[Slot] = []
    try:
        for i, (rule, value) in enumerate(rules):
            first = (requests[i], attempts[i] if i < len(attempts) else None) if i < len(requests) else None
            slots.append(acquire(runtime, rule, value, first))
    except BaseException:
        release_all(slots)
        raise
    return slots


def release_all(slots: list[Slot]) -> None:
    for slot in reversed(slots):
        slot.release()


class bulkhead(ContextDecorator):  # noqa: N801 - reads as a keyword: `with bulkhead("search-db"):`
    """Guard a block or function with the concurrency policy of that name (everyone together)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._slots: list[Slot | None] = []

    def _recreate_cm(self) -> bulkhead:
        # Used as a decorator, each call gets its own guard: threads must not share one stack.
        return type(self)(self.name)

    def __enter__(self) -> bulkhead:
        runtime = get_runtime()
        rule = runtime.snapshot().concurrency_by_name.get(self.name)
        # Only a "code" policy: one that matches requests already holds this request's slot, and
        # asking again would count the request twice (and, at a limit of 1, refuse it to itself).
        if rule is not None and rule.matcher.kind != "code":
            rule = None
        self._slots.append(acquire(runtime, rule, "all") if rule is not None else None)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        slot = self._slots.pop()
        if slot is not None:
            slot.release()
