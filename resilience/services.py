"""Operations on policies shared by the admin, the management commands and the API."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F

from resilience.db import guard as database
from resilience.engine.breaker import FORCED_STATES, BreakerConfig, BreakerStore, State
from resilience.engine.limiter import Decision
from resilience.http.clientip import ip_key
from resilience.http.guards import PUBLIC_STATE, announce
from resilience.models import (
    CircuitBreakerPolicy,
    ConcurrencyPolicy,
    Match,
    PolicyVersion,
    RateLimitPolicy,
    code_key_value,
    hash_key_value,
)
from resilience.ops.audit import log_bulk_update
from resilience.runtime import get_runtime, key_prefix
from resilience.runtime.policies import breaker_config, policy_problem
from resilience.stores.boundary import store_call
from resilience.stores.keys import adaptive_key, limit_key, slots_stem


@dataclass
class Propagation:
    """What became of the policy changes made inside propagation_report(): were the workers told?"""

    changes: int = 0  # policies_changed() calls
    errors: list[str] = field(default_factory=list)  # why each failed Redis signal failed

    @property
    def failed(self) -> bool:
        return bool(self.errors)


_report: ContextVar[Propagation | None] = ContextVar("policy_propagation", default=None)


@contextmanager
def propagation_report() -> Iterator[Propagation]:
    """Collect whether the workers were told of the policy changes committed inside the block."""
    report = Propagation()
    token = _report.set(report)
    try:
        yield report
    finally:
        _report.reset(token)


def _signal_workers(report: Propagation | None) -> None:
    error = get_runtime().bump_version()
    if report is not None and error is not None:
        report.errors.append(error)


def policies_changed() -> None:
    """Count a policy change in PostgreSQL now, and tell every worker through Redis once it commits.

    The count is in the change's own transaction, so it cannot be lost: a worker that misses the
    Redis signal finds it within POLICY_DB_CHECK_INTERVAL (resilience/runtime.py).
    """
    PolicyVersion.bump()
    report = _report.get()
    if report is not None:
        report.changes += 1
    transaction.on_commit(partial(_signal_workers, report))


@transaction.atomic
def policy_update(*, policies: Iterable[RateLimitPolicy | ConcurrencyPolicy], **fields: object) -> int:
    """Set fields (enabled, mode, ...) on rate-limit or concurrency policies (of one kind); return how many changed."""
    chosen = list(policies)
    model = type(chosen[0]) if chosen else RateLimitPolicy
    ids = [p.pk for p in chosen]
    before = list(model.objects.filter(pk__in=ids))
    count = model.objects.filter(pk__in=ids).update(**fields)
    log_bulk_update(before, fields)
    policies_changed()
    return count


def storage_key(policy: RateLimitPolicy, value: str) -> str:
    """Return the Redis key of one counted value of a policy."""
    return limit_key(key_prefix(), policy.pk, policy.epoch, value)


def key_value_for(policy: RateLimitPolicy, key: str) -> str:
    """Return the counted value for an operator-given key (IP, user id, header value, a code policy's key)."""
    if policy.match_type == Match.CODE and policy.key == RateLimitPolicy.Key.USER:
        return code_key_value(key)  # the username as code passes it: `ratelimit reset login-user --key boss`
    if policy.key == RateLimitPolicy.Key.HEADER:
        return hash_key_value(key)
    if policy.key == RateLimitPolicy.Key.USER and key.isdigit():
        return f"u{key}"
    if policy.key == RateLimitPolicy.Key.GLOBAL:
        return "all"
    # Addresses are counted the way the middleware keys them (an IPv6 client by its /64), so an
    # operator can name a client by the address seen in the logs.
    address = _ip_value(key)
    if address is None:
        return key
    return address if policy.key == RateLimitPolicy.Key.IP else f"ip:{address}"


def _ip_value(key: str) -> str | None:
    """Return the counted form of an address or network, or None when key is neither."""
    if "/" in key:
        try:
            return str(ipaddress.ip_network(key.strip(), strict=False))
        except ValueError:
            return None
    value = ip_key(key.strip(), settings.RATELIMIT_IPV6_PREFIX)
    return None if value == "invalid" else value


@transaction.atomic
def policy_reset(*, policies: Iterable[RateLimitPolicy], key: str | None = None) -> int:
    """Reset counters: every key of the policies (new epoch), or one key's. Return policies reset."""
    policies = list(policies)
    if key is None:
        count = RateLimitPolicy.objects.filter(pk__in=[p.pk for p in policies]).update(epoch=F("epoch") + 1)
        log_bulk_update(policies, {}, action="counters reset")
        policies_changed()
        return count
    runtime = get_runtime()
    keys = [storage_key(p, key_value_for(p, key)) for p in policies]
    transaction.on_commit(lambda: runtime.reset_limits(keys))
    return len(policies)


def policy_usage(*, policy: RateLimitPolicy, key: str) -> Decision | None:
    """Return the current decision for one key of a policy without consuming, or None if unknown."""
    from resilience.engine.limiter import StoreUnavailable
    from resilience.http.decision import limit_spec
    from resilience.runtime.policies import PolicyError, compile_ratelimit, user_ids

    try:
        rule = compile_ratelimit(policy, user_ids([policy]))
    except PolicyError:
        return None  # a policy that cannot be used has no usage
    spec = limit_spec(rule, key_value_for(policy, key))
    try:
        return get_runtime().shared.test([spec])[0]
    except StoreUnavailable:
        return None


# --- circuit breakers --------------------------------------------------------------------------


def _breaker_store() -> BreakerStore:
    store, _ = get_runtime().breaker_store()
    return store


def breaker_reset(*, names: Iterable[str]) -> int:
    """Close the named breakers with counters cleared; every worker hears it at once (published)."""
    store = _breaker_store()
    count = 0
    for name in names:
        announce(store.reset(name))
        count += 1
    get_runtime().forget_refusals()  # this process at once; the others hear it published
    database.guard.forget()  # and what it cached of the database breaker (the others' expires in 0.1 s)
    return count


def breaker_force(*, names: Iterable[str], state: State | None) -> int:
    """Hold the named breakers forced open / forced closed, or release them (state None)."""
    store = _breaker_store()
    count = 0
    for name in names:
        announce(store.force(name, state))
        count += 1
    get_runtime().forget_refusals()  # this process at once; the others hear it published
    database.guard.forget()  # and what it cached of the database breaker (the others' expires in 0.1 s)
    return count


def live_breaker_configs() -> list[BreakerConfig]:
    """Return every breaker in force in this process: the enabled policies as compiled, and the database's.

    Read from the in-process snapshot, not the policy table: /metrics and /health/breakers must
    answer while PostgreSQL is down.
    """
    runtime = get_runtime()
    configs = [rule.config for rule in runtime.snapshot().breakers if rule.name != database.NAME]
    return sorted([*configs, database.database_config(runtime)], key=lambda config: config.name)


def breaker_status(*, policies: Iterable[CircuitBreakerPolicy] | None = None) -> list[dict[str, object]]:
    """Return the live state of breakers (default: every one in force), read from the shared store."""
    if policies is None:
        configs = live_breaker_configs()
    else:
        # A policy that cannot be used is in force nowhere: it has no live state (admin and dashboard say why).
        configs = [breaker_config(p) for p in policies if policy_problem(p) is None]
    store, fallback = get_runtime().breaker_store()
    snapshots = store.snapshots(configs)
    return [
        {
            "name": snap.name,
            "state": PUBLIC_STATE[snap.state],
            "detail_state": str(snap.state),
            "summary": breaker_summary(snap.state, snap.retry_after),
            "forced": snap.forced,
            "generation": snap.generation,
            "consecutive_failures": snap.consecutive_failures,
            "window_calls": snap.window_calls,
            "window_failures": snap.window_failures,
            "opened_at": snap.opened_at,
            # A forced-open breaker never turns half-open by itself: null, not its open period.
            "seconds_to_half_open": _seconds_to_half_open(snap.state, snap.retry_after),
            "store": "process" if fallback else "shared",
        }
        for snap in snapshots
    ]


def _seconds_to_half_open(state: State, retry_after: float) -> float | None:
    if state is State.FORCED_OPEN:
        return None
    return round(retry_after, 3) if state is State.OPEN else 0.0


def breaker_summary(state: State, retry_after: float) -> str:
    """Return a breaker's state as staff read it: "open, half-open in 12 s", "forced open: held until released"."""
    if state is State.OPEN:
        return f"open, half-open in {max(1, math.ceil(retry_after))} s"
    if state in FORCED_STATES:
        held = "open" if state is State.FORCED_OPEN else "closed"
        return f"forced {held}: held until an operator releases it"
    return str(state)


# --- concurrency policies (bulkheads) ---------------------------------------------------------


def concurrency_status(*, policies: Iterable[ConcurrencyPolicy]) -> list[dict[str, object]]:
    """Return each policy's slots held and requests waiting, per counted key, read from Redis.

    Without Redis the slots are in each process and none can be read from here ("store": "process").
    Raises StoreUnavailable when Redis is configured and fails.
    """
    from resilience.http.bulkheads import counted_value, policy_base, policy_pattern

    store = get_runtime().concurrency_shared
    rows: list[dict[str, object]] = []
    for policy in policies:
        keys: list[dict[str, object]] = []
        if store is None:
            bases = []
        elif policy.key == ConcurrencyPolicy.Key.GLOBAL:
            # Its one key is known: no SCAN of the keyspace on every dashboard refresh.
            bases = [policy_base(policy.pk, "all")]
        else:
            bases = store.bases(policy_pattern(policy.pk))
        for base in bases:
            in_flight, waiting = store.status(base)  # type: ignore[union-attr]  # bases is empty without a store
            if in_flight or waiting:
                keys.append({"key": counted_value(base), "in_flight": in_flight, "waiting": waiting})
        rows.append(
            {
                "name": policy.name,
                "enabled": policy.enabled,
                "mode": policy.mode,
                "max_in_flight": policy.max_in_flight,
                "adaptive_floor": policy.adaptive_floor,
                "limit": _adaptive_limit(store, policy),
                "in_flight": sum(int(str(k["in_flight"])) for k in keys),
                "waiting": sum(int(str(k["waiting"])) for k in keys),
                "keys": keys,
                "store": "shared" if store is not None else "process",
            }
        )
    return rows


def _adaptive_limit(store: Any, policy: ConcurrencyPolicy) -> int:
    """Return the slots the policy hands out now: the fleet's adaptive limit, as Redis holds it, or max_in_flight."""
    if policy.adaptive_floor is None or store is None:
        return policy.max_in_flight
    raw = store_call("concurrency", store.client.hget, adaptive_key(key_prefix(), policy.pk), "limit")
    return max(policy.adaptive_floor, min(policy.max_in_flight, int(raw))) if raw is not None else policy.max_in_flight


def concurrency_reset(*, policies: Iterable[ConcurrencyPolicy]) -> int:
    """Give back every slot and queue place of the policies (held requests then release into nothing)."""
    from resilience.http.bulkheads import policy_pattern

    runtime = get_runtime()
    count = 0
    for policy in policies:
        if runtime.concurrency_shared is not None:
            runtime.concurrency_shared.reset(policy_pattern(policy.pk).removesuffix(":s") + ":*")
        runtime.concurrency_fallback.reset(slots_stem(key_prefix(), policy.pk))
        count += 1
    return count
