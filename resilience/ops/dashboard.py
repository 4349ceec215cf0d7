"""What the staff dashboard shows: breaker states, limiter decisions per minute, hot keys, health.

Everything here is read from the shared store in a few pipelined round trips per refresh; the
per-minute counters are written by the admission script itself, so the dashboard adds no work
to any request it reports on.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.urls import reverse
from redis.cluster import RedisCluster

from resilience import services
from resilience.engine.breaker import StoreUnavailable
from resilience.engine.limiter import Algorithm
from resilience.models import CircuitBreakerPolicy, ConcurrencyPolicy, PolicyVersion, RateLimitPolicy
from resilience.runtime import HEARTBEAT_INTERVAL, POLICY_BACKSTOP_SECONDS, get_runtime, key_prefix, workers_key
from resilience.runtime.policies import BREAKER, CONCURRENCY, RATELIMIT, policy_problem
from resilience.stores.boundary import store_call
from resilience.stores.keys import stats_key, top_key, top_sum_key

MINUTES = 15
TOP_KEYS = 10  # limited keys listed
OUTCOMES = {"a": "allowed", "l": "limited", "d": "dry_run_would_limit"}
COLOURS = {"allowed": "#2e7d32", "limited": "#c62828", "dry_run_would_limit": "#ef6c00"}
ACTIVE_WORKER_SECONDS = 30  # a worker that reported this recently counts as serving
FORGET_WORKER_SECONDS = 3600
STATES = ("confirmed", "idle", "pending", "behind")  # see worker_states()


def _minutes(now: float) -> tuple[int, int]:
    last = int(now // 60)
    return last - MINUTES + 1, last


def _read_minutes(
    first: int, last: int, labels: Iterable[str]
) -> tuple[list[dict[str, int]], dict[str, Counter[str]], str]:
    """Return per-minute counters, each policy's most limited keys over the span, and their source.

    The shared store keeps one sorted set per policy and minute; a policy's sets are summed into
    a scratch key inside one transaction, so the counts are exact over the whole span.
    """
    labels = list(labels)
    runtime = get_runtime()
    if runtime.uses_redis and runtime.store_available():
        if runtime.tally is not None:
            runtime.tally.flush()  # this worker's refusals from memory; the others' are at most a second late
        client = runtime.shared.client  # type: ignore[attr-defined]  # uses_redis: the Redis store

        def read() -> list[Any]:
            # One transaction on one Redis; on a cluster the keys span slots, so one pipeline.
            pipe = client.pipeline(transaction=not isinstance(client, RedisCluster))
            for minute in range(first, last + 1):
                pipe.hgetall(stats_key(key_prefix(), minute))
            for label in labels:
                # The scratch key shares the slot of the policy's minutes (stores/keys.py).
                scratch = top_sum_key(key_prefix(), label, uuid.uuid4().hex)
                pipe.zunionstore(scratch, [top_key(key_prefix(), minute, label) for minute in range(first, last + 1)])
                pipe.zrevrange(scratch, 0, TOP_KEYS - 1, withscores=True)
                pipe.unlink(scratch)
            replies: list[Any] = pipe.execute()
            return replies

        try:
            replies = store_call("dashboard", read)  # a client may refuse a command while queueing it
        except StoreUnavailable as e:  # shown as "counters from the process store" on the page
            runtime.store_failed("dashboard", e)
        else:
            span = last - first + 1
            counts = [{_text(k): int(v) for k, v in reply.items()} for reply in replies[:span]]
            ranked = replies[span + 1 :: 3]  # per policy: ZUNIONSTORE, ZREVRANGE, UNLINK
            top = {
                label: Counter({_text(member): int(score) for member, score in reply})
                for label, reply in zip(labels, ranked, strict=True)
            }
            return counts, top, "shared"
    rows = runtime.fallback_admission.stats.minutes(first, last)
    top = {label: Counter() for label in labels}
    for _, minute_top in rows:
        for label, keys in minute_top.items():
            if label in top:
                top[label].update(keys)
    return [counts for counts, _ in rows], top, "process"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sparkline(series: dict[str, list[int]], width: int = 180, height: int = 40) -> str:
    """Return an inline SVG of stacked per-minute bars (allowed, dry run, limited)."""
    span = len(next(iter(series.values())))
    totals = [sum(values[i] for values in series.values()) for i in range(span)]
    peak = max(totals) or 1
    bar = width / span
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="decisions per minute, last {span} minutes">'
    ]
    for i in range(span):
        y = float(height)
        for outcome in ("allowed", "dry_run_would_limit", "limited"):
            value = series[outcome][i]
            if not value:
                continue
            h = value / peak * (height - 2)
            y -= h
            parts.append(
                f'<rect x="{i * bar + 1:.1f}" y="{y:.1f}" width="{max(bar - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{COLOURS[outcome]}"><title>{outcome}: {value}</title></rect>'
            )
    parts.append(f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#999"/></svg>')
    return "".join(parts)


def _health(database: BaseDatabaseWrapper = connection) -> dict[str, dict[str, Any]]:
    """Return whether the database (named by the engine in use) and Redis answer, and how fast."""
    # display_name is the backend's own: "PostgreSQL", "SQLite", "MySQL"; SQLite without DATABASE_URL.
    out: dict[str, dict[str, Any]] = {"database": {"engine": database.display_name}}
    started = time.perf_counter()
    try:
        with database.cursor() as cursor:
            cursor.execute("SELECT 1")
        out["database"].update(ok=True, ms=round((time.perf_counter() - started) * 1000, 1))
    except Exception as e:  # noqa: BLE001 - the page reports it
        out["database"].update(ok=False, error=str(e)[:200])
    runtime = get_runtime()
    if not runtime.uses_redis:
        out["redis"] = {"ok": None, "error": "not configured (in-process stores)"}
        return out
    started = time.perf_counter()
    try:
        runtime.shared.client.ping()  # type: ignore[attr-defined]  # uses_redis: the Redis store
        out["redis"] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}
    except Exception as e:  # noqa: BLE001 - the page reports it
        out["redis"] = {"ok": False, "error": str(e)[:200]}
    return out


class WorkerReport(NamedTuple):
    """What one worker last reported (Runtime.heartbeat): times are unix seconds."""

    worker: str
    version: int | None  # the PostgreSQL policy version it serves requests under (None: none loaded)
    loaded_at: float | None  # when it first enforced that version
    at: float  # when it last reported, always while serving a request


def _report(worker: object, raw: object) -> WorkerReport | None:
    """Return a worker's report parsed, or None when it is not one (written by an older release)."""
    try:
        fields = json.loads(_text(raw))
        version = fields["version"]
        loaded_at = fields["loaded_at"]
        return WorkerReport(
            worker=_text(worker),
            version=None if version is None else int(version),
            loaded_at=None if loaded_at is None else float(loaded_at),
            at=float(fields["at"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


def worker_states(reports: Iterable[WorkerReport], version: int, now: float) -> tuple[float | None, dict[str, str]]:
    """Return when ``version`` was first in force on a worker, and each active worker's state under it.

    - confirmed: it reported serving requests under ``version`` (or a later one).
    - idle: its last report is older than the first worker's load of ``version``. It has served no
      request since (as far as reports show: a worker serving requests reports every HEARTBEAT_INTERVAL,
      and at once when it loads a version), so it cannot have confirmed it, and it checks for changes
      before its next request: no alarm.
    - pending: it served a request under an older version, but within POLICY_BACKSTOP_SECONDS of the
      first load, the time a change may take to reach every worker (or no worker has loaded it yet).
    - behind: it served a request under an older version later than that: a promise broken.

    The first load is the reference, not the save: it is a moment the change was surely committed
    (a worker read it), and it costs no column. Reports from other hosts are compared by wall clock.
    """
    reports = list(reports)
    loads = [r.loaded_at for r in reports if r.version is not None and r.version >= version and r.loaded_at is not None]
    since = min(loads) if loads else None
    states: dict[str, str] = {}
    for r in reports:
        if now - r.at > ACTIVE_WORKER_SECONDS:
            continue
        if r.version is not None and r.version >= version:
            states[r.worker] = "confirmed"
        elif since is not None and r.at < since:
            states[r.worker] = "idle"
        elif since is None or r.at <= since + POLICY_BACKSTOP_SECONDS:
            states[r.worker] = "pending"
        else:
            states[r.worker] = "behind"
    return since, states


def _workers(now: float) -> dict[str, Any]:
    """Return which workers serve requests under the current policy version, and which do not yet."""
    runtime = get_runtime()
    # The promises the page states next to the counts.
    promises = {"backstop_seconds": POLICY_BACKSTOP_SECONDS, "report_seconds": HEARTBEAT_INTERVAL}
    unknown: dict[str, Any] = {"version": None, "since": None, "active": 0, "workers": [], **promises}
    unknown.update(dict.fromkeys(STATES, 0))
    if not (runtime.uses_redis and runtime.store_available()):
        return unknown
    try:
        client = runtime.shared.client  # type: ignore[attr-defined]  # uses_redis: the Redis store
        raw = store_call("dashboard", client.hgetall, workers_key())
        reports = [r for r in (_report(worker, value) for worker, value in raw.items()) if r is not None]
        gone = [r.worker for r in reports if now - r.at > FORGET_WORKER_SECONDS]
        gone += [_text(worker) for worker, value in raw.items() if _report(worker, value) is None]
        if gone:
            store_call("dashboard", client.hdel, workers_key(), *gone)
    except StoreUnavailable as e:  # shown as unknown
        runtime.store_failed("dashboard", e)
        return unknown
    # PostgreSQL's count of changes, not Redis's counter: a change whose Redis signal was lost
    # still counts, and still has to reach every worker (through the backstop).
    version = PolicyVersion.current()
    since, states = worker_states(reports, version, now)
    workers = [
        {
            "worker": r.worker,
            "version": r.version,
            "state": states[r.worker],
            "seen": round(now - r.at, 1),
            "loaded": None if r.loaded_at is None else round(now - r.loaded_at, 1),
        }
        for r in sorted(reports, key=lambda r: r.worker)
        if r.worker in states
    ]
    counts = Counter(states.values())
    return {
        "version": version,
        "since": since,
        "active": len(workers),
        **{state: counts[state] for state in STATES},
        "workers": workers,
        **promises,
    }


def _policy_errors(
    now: float,
    ratelimits: list[RateLimitPolicy],
    breakers: list[CircuitBreakerPolicy],
    bulkheads: list[ConcurrencyPolicy] | None = None,
) -> list[dict[str, Any]]:
    """Return the policies that are skipped (cannot be used as saved) or failed requests lately, worst first."""
    recent = get_runtime().policy_errors.recent(now)
    rows: list[dict[str, Any]] = []
    for kind, label, admin_name, policies in (
        (RATELIMIT, "rate limit", "ratelimitpolicy", ratelimits),
        (BREAKER, "breaker", "circuitbreakerpolicy", breakers),
        (CONCURRENCY, "concurrency limit", "concurrencypolicy", bulkheads or []),
    ):
        for policy in policies:
            url = reverse(f"admin:resilience_{admin_name}_change", args=[policy.pk])
            problem = policy_problem(policy)
            if problem is not None:
                row = {"stage": "compile", "reason": problem, "seconds_ago": None}
            else:
                error = recent.get((kind, policy.name))
                # An error from before the policy's last save says nothing about it now.
                if error is None or float(error["at"]) < policy.updated_at.timestamp():
                    continue
                row = {"stage": error["stage"], "reason": error["reason"], "seconds_ago": round(now - error["at"])}
            rows.append({"kind": label, "name": policy.name, "enabled": policy.enabled, "change_url": url, **row})
    return sorted(rows, key=lambda r: (r["stage"] != "compile", r["kind"], r["name"]))


def _concurrency(policies: list[ConcurrencyPolicy]) -> tuple[list[dict[str, Any]], str]:
    """Return each concurrency policy with the slots held now and requests waiting, and any store error."""
    try:
        rows = services.concurrency_status(policies=policies)
    except StoreUnavailable as e:
        return [], str(e)[:200]
    by_name = {p.name: p for p in policies}
    for row in rows:
        policy = by_name[str(row["name"])]
        row["change_url"] = reverse("admin:resilience_concurrencypolicy_change", args=[policy.pk])
        row["max_wait_ms"] = policy.max_wait_ms
        row["key"] = policy.key if policy.key != "header" else f"header {policy.header_name}"
    return rows, ""


def dashboard_data() -> dict[str, Any]:
    """Return everything the dashboard page shows, as JSON-ready data."""
    now = time.time()
    first, last = _minutes(now)
    policies = list(RateLimitPolicy.objects.prefetch_related("overrides"))
    breaker_policies = list(CircuitBreakerPolicy.objects.all())
    concurrency_policies = list(ConcurrencyPolicy.objects.all())
    policy_errors = _policy_errors(now, policies, breaker_policies, concurrency_policies)
    failing = {row["name"]: row for row in policy_errors if row["kind"] == "rate limit"}
    names = {str(p.pk): p.name for p in policies}
    counts, top, source = _read_minutes(first, last, names)
    rows = []
    for p in policies:
        series = {name: [c.get(f"{p.pk}:{code}", 0) for c in counts] for code, name in OUTCOMES.items()}
        rows.append(
            {
                "id": p.pk,
                "name": p.name,
                "enabled": p.enabled,
                "mode": p.mode,
                "rate": f"{p.limit}/{p.period}s",
                # What clients see of a token bucket as q and w in RateLimit-Policy; null for windows.
                "burst": p.stated_quota()[0] if p.algorithm == Algorithm.TOKEN_BUCKET else None,
                "refill_seconds": p.stated_quota()[1] if p.algorithm == Algorithm.TOKEN_BUCKET else None,
                "burst_summary": p.burst_summary(),
                "key": p.key if p.key != "header" else f"header {p.header_name}",
                "algorithm": p.algorithm,
                "totals": {name: sum(values) for name, values in series.items()},
                "series": series,
                "svg": sparkline(series),
                "change_url": reverse("admin:resilience_ratelimitpolicy_change", args=[p.pk]),
                "error": failing[p.name]["reason"] if p.name in failing else "",
                "skipped": failing[p.name]["stage"] == "compile" if p.name in failing else False,
            }
        )
    ranked = sorted(
        ((count, names[label], value) for label, keys in top.items() for value, count in keys.items()),
        key=lambda row: (-row[0], row[1], row[2]),
    )
    top_keys = []
    for count, policy, value in ranked[:TOP_KEYS]:
        if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
            value = f"hash {value[:12]}…"  # a header value: only a prefix of its hash is shown
        top_keys.append({"policy": policy, "key": value, "count": count})
    try:
        breakers = services.breaker_status(policies=breaker_policies)
        breaker_error = ""
    except StoreUnavailable as e:
        breakers, breaker_error = [], str(e)[:200]
    ids = {b.name: b.pk for b in breaker_policies}
    for row in breakers:
        row["change_url"] = reverse("admin:resilience_circuitbreakerpolicy_change", args=[ids[str(row["name"])]])
    concurrency, concurrency_error = _concurrency(concurrency_policies)
    return {
        "generated_at": now,
        "concurrency": concurrency,
        "concurrency_error": concurrency_error,
        "minutes": [m * 60 for m in range(first, last + 1)],
        "source": source,
        "policies": rows,
        "top_keys": top_keys,
        "breakers": breakers,
        "breaker_error": breaker_error,
        "policy_errors": policy_errors,
        "health": _health(),
        "propagation": _workers(now),
    }
