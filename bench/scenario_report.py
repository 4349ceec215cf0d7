"""Judge the attack scenario's records, draw its charts and write docs/benchmarks.md.

finish(results) evaluates the assertions, prints the PASS/FAIL table, writes
bench/results/scenario.json (figures, not the raw records), the PNG charts under docs/charts/,
reruns the micro-benchmarks of bench/run (or reads their last results, BENCH_SCENARIO_MICRO=0),
writes the report and returns the exit status: 0 only when every assertion holds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import common

DOCS = common.ROOT / "docs"
CHARTS = DOCS / "charts"
MICRO = ("orders", "ratelimit", "breaker")
DESIGNED_503 = {"temporary-reduced-capacity", "dependency-unavailable"}
OUTCOMES = (
    "2xx",
    "409 out of stock",
    "401",
    "429",
    "503 breaker open",
    "503 dependency failed",
    "other",
    "5xx",
    "error",
)
ACTORS = ("legit", "crawler", "bot", "spike")
BREAKER_OPEN_SECONDS = 15.0
REJECT_P99_MS = 5.0
OPEN_WITHIN_SECONDS = 1.0


def outcome(r: dict[str, Any]) -> str:
    status, problem = r["status"], r["problem"]
    if status == 0:
        return "error"
    if 200 <= status < 300:
        return "2xx"
    if status == 409 and problem == "insufficient-stock":
        return "409 out of stock"
    if status in (401, 429):
        return str(status)
    if status == 503 and problem == "temporary-reduced-capacity":
        return "503 breaker open"
    if status == 503 and problem == "dependency-unavailable":
        return "503 dependency failed"
    return "5xx" if status >= 500 else "other"


def limiter_admitted(r: dict[str, Any]) -> bool:
    """Return True if the rate limiter decided the request and let it through.

    Every answer the limiter decided carries its quota (a RateLimit field); a 503 from a breaker
    the worker already knew was open never asked it.
    """
    return r["status"] not in (0, 429) and r["quota"]


def limiter_not_asked(r: dict[str, Any]) -> bool:
    """Return True if the request was answered without asking the rate limiter."""
    return r["status"] not in (0, 429) and not r["quota"]


def _script_calls_text(results: dict[str, Any]) -> str:
    """Say how many Lua scripts (admissions, breaker outcomes) Redis ran for the requests sent."""
    calls = results.get("redis_script_calls")
    if calls is None:
        return "an unrecorded number of scripts"
    sent = len(results["records"])
    return (
        f"{calls} scripts (admissions and breaker outcomes) for {sent} requests, {calls / sent:.2f} per request: "
        "a worker asks nothing for a client it knows Redis refuses, or a breaker it knows is open"
    )


def pct(values: Iterable[float], q: float) -> float:
    return common.percentile(sorted(values), q)


def latency_ms(r: dict[str, Any]) -> float:
    return (r["received"] - r["sent"]) * 1000


def _row(name: str, ok: bool, measured: str, limit: str) -> dict[str, Any]:
    return {"assertion": name, "ok": ok, "measured": measured, "limit": limit}


def policy_text(policy: dict[str, Any]) -> str:
    """Describe a rate-limit policy as read from the database: "20 per 600 s, token bucket, burst 3"."""
    text = f"{policy['limit']} per {policy['period']} s, {policy['algorithm'].replace('_', ' ')}"
    if policy["algorithm"] == "token_bucket":
        text += f", burst {policy['burst'] or policy['limit']}"
    return text


def admissible(policy: dict[str, Any], span: float) -> int:
    """Return the most requests of one key the policy can admit within any `span` seconds.

    Token bucket (GCRA): the burst at once, then one per emission interval period / limit, so
    burst + floor(span / interval). Sliding window: limit per period. Fixed window: a boundary
    span touches at most ceil(span / period) + 1 windows.
    """
    limit, period = policy["limit"], float(policy["period"])
    if limit == 0:
        return 0
    if policy["algorithm"] == "token_bucket":
        return (policy["burst"] or limit) + math.floor(span / (period / limit) + 1e-9)
    windows = math.ceil(span / period) + (1 if policy["algorithm"] == "fixed_window" else 0)
    return limit * windows


# --- Analysis ----------------------------------------------------------------------------------


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    records, samples = results["records"], results["samples"]
    timeline, events = results["config"]["timeline"], results["load"]["events"]
    wall_t0 = results["load"]["wall_t0"]
    for r in records:
        r["outcome"] = outcome(r)
    by_actor: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_actor[r["actor"]].append(r)
    attack_start, attack_end = timeline["attack"]

    # The failure and the breaker's answer to it.
    # The failure starts somewhere between the staff PUT's send and its answer (the fault is then
    # in the shared cache, so every worker's next search fails): the window opens at the send, and
    # the breaker's opening is timed from it too (the stricter choice).
    fault_on_sent, fault_on_answered = events.get("fault_on") or [timeline["fault_on"]] * 2
    fault_on = fault_on_sent
    fault_off_sent, fault_off_received = events.get("fault_off") or [timeline["fault_off"]] * 2
    transitions: list[dict[str, Any]] = []
    for s in samples:
        if not transitions or transitions[-1]["state"] != s[2] or transitions[-1]["generation"] != s[3]:
            transitions.append({"t": s[1], "state": s[2], "generation": s[3], "opened_at": s[4]})
    open_samples = [s for s in samples if s[1] >= fault_on and s[2] == "open"]
    breaker_503 = [r for r in records if r["outcome"] == "503 breaker open"]
    first_503 = min((r["received"] for r in breaker_503 if r["received"] >= fault_on), default=None)
    first_open_sample = open_samples[0][1] if open_samples else None
    bounds = [t for t in (first_open_sample, first_503) if t is not None]
    opened_upper = min(bounds) if bounds else None
    # When the breaker opened: the store's own opened_at (Redis's clock, read by the 250 ms
    # sampler) of the first trip after the fault, on the generator's clock through wall_t0.
    store_opened = [s[4] - wall_t0 for s in open_samples if s[4] and s[4] - wall_t0 >= fault_on - 1]
    opened_exact = min(store_opened) if store_opened else None
    opened_at = opened_exact if opened_exact is not None else opened_upper
    closed = [s for s in samples if s[0] >= fault_off_received and s[2] == "closed"]
    closed_at = closed[0][1] if closed else None
    window_end = closed_at if closed_at is not None else fault_off_received + BREAKER_OPEN_SECONDS + 5
    failure = (fault_on, window_end)

    def in_failure(r: dict[str, Any]) -> bool:
        return failure[0] <= r["sent"] < failure[1]

    # Legitimate users.
    legit = by_actor["legit"]
    judged = [r for r in legit if not (r["endpoint"] == "search" and in_failure(r))]

    def legit_ok(r: dict[str, Any]) -> bool:
        if r["endpoint"] == "order-replay":
            extra = r["extra"] or []
            return r["status"] == 201 and len(extra) == 5 and extra[3] == extra[2] and extra[4] is True
        return r["outcome"] == "2xx" or (r["endpoint"] == "order" and r["outcome"] == "409 out of stock")

    failures = [r for r in judged if not legit_ok(r)]
    success_rate = 1 - len(failures) / len(judged) if judged else 0.0
    warm = timeline["warmup"][1]
    baseline = [latency_ms(r) for r in legit if warm <= r["sent"] < timeline["baseline"][1]]
    outside = [latency_ms(r) for r in legit if r["sent"] >= warm and not in_failure(r)]
    baseline_p99, outside_p99 = pct(baseline, 99), pct(outside, 99)

    phases = {
        "warm-up (not judged)": (0.0, warm),
        "baseline": (warm, attack_start),
        "attack, before the failure": (attack_start, failure[0]),
        "failure window (fault on until the breaker closes)": failure,
        "attack, after recovery": (failure[1], attack_end),
        "cool-down": (attack_end, timeline["end"] + 60),
    }
    cpu_samples = [x for x in results["db_samples"] if len(x) >= 5]

    def cpu(lo: float, hi: float) -> tuple[float, float, float]:
        """Mean busy %, mean stolen % and the busiest 250 ms (busy + stolen) of the machine's CPUs in [lo, hi)."""
        inside = [x for x in cpu_samples if lo < x[0] <= hi + 0.25]
        if not inside:
            return 0.0, 0.0, 0.0
        return (
            round(sum(x[3] for x in inside) / len(inside), 1),
            round(sum(x[4] for x in inside) / len(inside), 1),
            round(max(x[3] + x[4] for x in inside), 1),
        )

    phase_rows = []
    for label, (lo, hi) in phases.items():
        for endpoint_set, name in (
            (None, "all"),
            ({"search"}, "search"),
            ({"order", "order-replay", "cancel"}, "orders"),
        ):
            lat = [
                latency_ms(r)
                for r in legit
                if lo <= r["sent"] < hi and (endpoint_set is None or r["endpoint"] in endpoint_set)
            ]
            phase_rows.append(
                {
                    "phase": label,
                    "requests": name,
                    "count": len(lat),
                    "p50_ms": round(pct(lat, 50), 1),
                    "p95_ms": round(pct(lat, 95), 1),
                    "p99_ms": round(pct(lat, 99), 1),
                    "max_ms": round(max(lat, default=0.0), 1),
                    "cpu": cpu(lo, hi),
                }
            )

    # Budgets of the crawler and the bot: what the limiter admitted (see limiter_admitted).
    policies = results["config"]["policies"]["ratelimits"]

    def budget(actor: str, policy: dict[str, Any]) -> dict[str, Any]:
        period = float(policy["period"])
        per_period = admissible(policy, period)  # sliding window: the limit; token bucket: burst + limit
        admitted = sorted((r for r in by_actor[actor] if limiter_admitted(r)), key=lambda r: r["sent"])
        # The server decided each request somewhere between its send and receive times. Certain
        # violation: per_period + 1 admitted requests that all reached the server within `period`.
        # certain_max: the most admitted requests surely decided inside one period; by_send: the
        # most whose send times fall inside one period (queueing can push those over the limit).
        certain = False
        certain_max = by_send = 0
        for i in range(len(admitted)):
            j = i + per_period
            if j < len(admitted) and max(r["received"] for r in admitted[i : j + 1]) - admitted[i]["sent"] < period:
                certain = True
            start = admitted[i]["sent"]
            inside = [r for r in admitted[i:] if r["sent"] < start + period]
            by_send = max(by_send, len(inside))
            certain_max = max(certain_max, sum(1 for r in inside if r["received"] < start + period))
        # Every request of the actor was decided between its first send and its last answer: the
        # policy cannot have admitted more than `admissible` over that span.
        sent_all = by_actor[actor]
        span = max((r["received"] for r in sent_all), default=0.0) - min((r["sent"] for r in sent_all), default=0.0)
        return {
            "policy": policy["name"],
            "policy_text": policy_text(policy),
            "decision_span": round(span, 2),
            "bound_over_span": admissible(policy, span),
            "bound_over_attack": admissible(policy, attack_end - attack_start),
            "sent": len(by_actor[actor]),
            "admitted": len(admitted),
            "limited": sum(1 for r in by_actor[actor] if r["status"] == 429),
            "known_open": sum(1 for r in by_actor[actor] if limiter_not_asked(r)),
            "per_period": per_period,
            "max_in_any_period": certain_max,
            "max_in_any_period_by_send": by_send,
            "violation": certain,
            "admitted_span": [round(admitted[0]["sent"], 2), round(admitted[-1]["sent"], 2)] if admitted else [],
        }

    crawler_budget = budget("crawler", policies["search-ip"])
    bot_budget = budget("bot", policies["login-ip"])

    # Breaker rejections: what the refusal itself cost (the middleware's Server-Timing, from
    # receiving the request to the 503 being ready), gunicorn's service time of the same requests
    # (adds waiting for the GIL among the worker's threads) and the client-side latency (adds
    # the accept queue, waiting for a free thread and the loopback).
    timings = results["server_timings"]
    reject_client = [latency_ms(r) for r in breaker_503]
    reject_decision = [r["timing"][0] for r in breaker_503 if r["timing"] and r["timing"][1] == "refused"]
    reject_cpu = [r["timing"][2] for r in breaker_503 if r["timing"] and r["timing"][2] is not None]
    limited_decision = [r["timing"][0] for r in records if r["status"] == 429 and r["timing"]]
    search_decision = [
        r["timing"][0] for r in records if r["endpoint"] == "search" and r["status"] == 200 and r["timing"]
    ]
    reject_server = [timings[r["rid"]][1] / 1000 for r in breaker_503 if r["rid"] in timings]
    search_ok_server = [
        timings[r["rid"]][1] / 1000
        for r in records
        if r["endpoint"] == "search" and r["status"] == 200 and r["rid"] in timings
    ]
    limited_server = [timings[r["rid"]][1] / 1000 for r in records if r["status"] == 429 and r["rid"] in timings]

    # 5xx and transport errors outside the design.
    unexpected = [
        r
        for r in records
        if r["status"] == 0
        or (r["status"] >= 500 and not (r["status"] == 503 and r["problem"] in DESIGNED_503))
        or (r["status"] == 503 and r["endpoint"] != "search")
        or (
            r["outcome"] == "503 dependency failed"
            and not (r["received"] >= fault_on and r["sent"] <= fault_off_received)
        )
    ]

    db = results["db_checks"]
    db_max = max((s[1] for s in results["db_samples"]), default=0)
    ceiling = results["config"]["db_ceiling"]
    spike = by_actor["spike"]
    spike_bad = [r for r in spike if r["outcome"] not in ("2xx", "409 out of stock")]

    open_latency = opened_at - fault_on if opened_at is not None else math.inf
    close_latency = closed_at - fault_off_sent if closed_at is not None else math.inf
    # Every rejection must carry its timing; a missing one counts as infinitely slow.
    reject_p99 = pct(reject_decision, 99) if reject_decision and len(reject_decision) == len(breaker_503) else math.inf
    assertions = [
        _row(
            f"crawler admitted within search-ip ({crawler_budget['policy_text']})",
            not crawler_budget["violation"]
            and crawler_budget["max_in_any_period"] <= crawler_budget["per_period"]
            and crawler_budget["admitted"] <= crawler_budget["bound_over_span"],
            f"{crawler_budget['admitted']} of {crawler_budget['sent']} admitted; "
            f"at most {crawler_budget['max_in_any_period']} surely decided in one {policies['search-ip']['period']} s",
            f"≤ {crawler_budget['per_period']} in any {policies['search-ip']['period']} s, "
            f"≤ {crawler_budget['bound_over_span']} over the attack",
        ),
        _row(
            f"bot admitted within login-ip ({bot_budget['policy_text']})",
            not bot_budget["violation"] and bot_budget["admitted"] <= bot_budget["bound_over_span"],
            f"{bot_budget['admitted']} of {bot_budget['sent']} admitted over {bot_budget['decision_span']:.1f} s",
            f"≤ {bot_budget['bound_over_span']} (what the policy admits in that span)",
        ),
        _row(
            "legitimate success rate outside the failure window",
            success_rate >= 0.99,
            f"{success_rate:.2%} ({len(judged) - len(failures)} / {len(judged)})",
            "≥ 99%",
        ),
        _row(
            "legitimate p99 outside the failure window vs baseline",
            outside_p99 <= 2 * baseline_p99,
            f"{outside_p99:.1f} ms vs {baseline_p99:.1f} ms (x{outside_p99 / baseline_p99 if baseline_p99 else 0:.2f})",
            "≤ 2x baseline",
        ),
        _row(
            "search breaker opens after the failure starts",
            open_latency <= OPEN_WITHIN_SECONDS,
            f"{open_latency:.3f} s after the fault PUT was sent (store's opened_at; first 503 "
            f"{'%.3f s' % (first_503 - fault_on) if first_503 is not None else 'n/a'})",
            f"≤ {OPEN_WITHIN_SECONDS:g} s",
        ),
        _row(
            "open breaker rejects fast (server side, p99)",
            reject_p99 < REJECT_P99_MS,
            f"{reject_p99:.2f} ms refusal (Server-Timing, {len(reject_decision)} of {len(breaker_503)}); "
            f"{pct(reject_server, 99):.2f} ms gunicorn service time; {pct(reject_client, 99):.2f} ms client",
            f"< {REJECT_P99_MS:g} ms",
        ),
        _row(
            "search breaker closes after recovery",
            close_latency <= BREAKER_OPEN_SECONDS + 5,
            f"{close_latency:.2f} s after the fault was switched off",
            f"≤ {BREAKER_OPEN_SECONDS:g} + 5 s",
        ),
        _row(
            "no 5xx but the designed 503s, no transport errors",
            not unexpected,
            f"{len(unexpected)} unexpected"
            + (
                f" (e.g. {unexpected[0]['actor']} {unexpected[0]['endpoint']} {unexpected[0]['status']})"
                if unexpected
                else ""
            ),
            "0",
        ),
        _row(
            "spike customers: 201 or 409 only",
            not spike_bad and bool(spike),
            f"{len(spike) - len(spike_bad)} / {len(spike)}",
            "all",
        ),
        _row(
            "every 201 order exists, none without a 201",
            db["orders_201_found"] == db["orders_201"]
            and not db["orders_201_missing"]
            and not db["orders_without_201"],
            f"{db['orders_201_found']} / {db['orders_201']} found; {len(db['orders_without_201'])} unanswered",
            "all, 0",
        ),
        _row(
            "stock conserved on every book (no loss, no oversell)",
            not db["stock_broken"] and db["negative_stock"] == 0 and not db["cancelled_not_applied"],
            f"{db['books_checked'] - len(db['stock_broken'])} / {db['books_checked']} books; "
            f"{db['cancelled_200']} cancels applied",
            "initial = current + sold",
        ),
        _row(
            "DB connections never above workers x DB_POOL_MAX",
            db_max <= ceiling,
            f"max {db_max} over {len(results['db_samples'])} samples",
            f"≤ {ceiling}",
        ),
    ]

    # Time series for the charts (1 s bins).
    end = int(math.ceil(max((r["received"] for r in records), default=0))) + 1
    series: dict[str, dict[str, list[int]]] = {a: {o: [0] * end for o in OUTCOMES} for a in ACTORS}
    unasked: dict[str, list[int]] = {a: [0] * end for a in ACTORS}  # answered without asking the limiter
    for r in records:
        if r["actor"] in series and 0 <= r["sent"] < end:
            series[r["actor"]][r["outcome"]][int(r["sent"])] += 1
            if limiter_not_asked(r):
                unasked[r["actor"]][int(r["sent"])] += 1
    legit_5s = []
    for lo in range(0, end, 5):
        lat = [latency_ms(r) for r in legit if lo <= r["sent"] < lo + 5]
        if lat:
            legit_5s.append([lo + 2.5, pct(lat, 50), pct(lat, 95), pct(lat, 99)])

    windows = []
    for lo in range(int(warm), end, 2):
        lat = [latency_ms(r) for r in legit if lo <= r["sent"] < lo + 2 and not in_failure(r)]
        if len(lat) >= 10:
            windows.append([lo, len(lat), round(pct(lat, 50), 1), round(pct(lat, 99), 1), *cpu(lo, lo + 2)])
    bot_admitted = [r for r in by_actor["bot"] if r["status"] not in (0, 429)]
    bot_server = [timings[r["rid"]][1] / 1000 for r in bot_admitted if r["rid"] in timings]
    after_fault = [latency_ms(r) for r in legit if r["endpoint"] == "search" and fault_on <= r["sent"] < fault_on + 2]

    counts = {
        actor: dict(Counter(r["outcome"] for r in by_actor[actor]))
        for actor in (*ACTORS, "staff")
        if by_actor.get(actor)
    }
    endpoint_counts = {
        ep: dict(Counter(r["outcome"] for r in legit if r["endpoint"] == ep))
        for ep in ("list", "detail", "search", "order", "order-replay", "cancel")
    }
    return {
        "assertions": assertions,
        "ok": all(a["ok"] for a in assertions),
        "counts": counts,
        "legit_endpoints": endpoint_counts,
        "legit_failures": Counter(f"{r['endpoint']} {r['status']} {r['problem']}".strip() for r in failures),
        "phases": phase_rows,
        "crawler": crawler_budget,
        "bot": bot_budget,
        "breaker": {
            "fault_on": round(fault_on, 3),
            "fault_on_answered": round(fault_on_answered, 3),
            "fault_off": round(fault_off_sent, 3),
            "opened_upper_bound": opened_upper,
            "opened_store": opened_exact,
            "first_503": first_503,
            "first_open_sample": first_open_sample,
            "closed_at": closed_at,
            "failure_window": [round(failure[0], 3), round(failure[1], 3)],
            "transitions": transitions,
            "rejections": len(breaker_503),
            "opened_at": opened_at,
            "open_latency": open_latency if opened_at is not None else None,
            "reject_client_ms": {q: round(pct(reject_client, q), 2) for q in (50, 99)},
            "reject_decision_ms": {q: round(pct(reject_decision, q), 2) for q in (50, 99, 100)},
            "reject_decision_matched": len(reject_decision),
            "reject_cpu_ms": {q: round(pct(reject_cpu, q), 2) for q in (50, 99, 100)},
            "reject_cpu_matched": len(reject_cpu),
            "limited_decision_ms": {q: round(pct(limited_decision, q), 2) for q in (50, 99)},
            "search_decision_ms": {q: round(pct(search_decision, q), 2) for q in (50, 99)},
            "reject_server_ms": {q: round(pct(reject_server, q), 2) for q in (50, 99)},
            "reject_server_matched": len(reject_server),
            "search_ok_server_ms": {q: round(pct(search_ok_server, q), 2) for q in (50, 99)},
            "limited_server_ms": {q: round(pct(limited_server, q), 2) for q in (50, 99)},
            "dependency_failures": sum(1 for r in records if r["outcome"] == "503 dependency failed"),
        },
        "db_max_connections": db_max,
        "legit_p99_ms": {"baseline": round(baseline_p99, 1), "outside_failure": round(outside_p99, 1)},
        "legit_2s_windows": windows,
        "bot_admitted_server_ms": {q: round(pct(bot_server, q), 1) for q in (50, 100)},
        "bot_admitted_span": [
            round(min((r["sent"] for r in bot_admitted), default=0), 2),
            round(max((r["received"] for r in bot_admitted), default=0), 2),
        ],
        "search_latency_after_fault_ms": {q: round(pct(after_fault, q), 1) for q in (50, 99)},
        "bot_admitted_sent": [round(r["sent"], 2) for r in bot_admitted],
        "searches_after_fault": [
            sum(1 for r in records if r["endpoint"] == "search" and fault_on <= r["sent"] < fault_on + 1),
            sum(
                1
                for r in records
                if r["endpoint"] == "search" and fault_on <= r["sent"] < fault_on + 1 and r["status"] != 429
            ),
        ],
        "db_ceiling": ceiling,
        "unexpected": [{k: r[k] for k in ("actor", "endpoint", "sent", "status", "problem")} for r in unexpected[:20]],
        "series": series,
        "unasked": unasked,
        "legit_5s": legit_5s,
        "end": end,
    }


# --- Charts ------------------------------------------------------------------------------------


COLOURS = {
    "2xx": "#2e7d32",
    "409 out of stock": "#9e9d24",
    "401": "#6d4c41",
    "429": "#f9a825",
    "503 breaker open": "#1565c0",
    "503 dependency failed": "#c62828",
    "other": "#8e24aa",
    "5xx": "#000000",
    "error": "#616161",
}


def _shade(ax: Any, results: dict[str, Any], analysis: dict[str, Any]) -> None:
    timeline = results["config"]["timeline"]
    # Behind the data (zorder 0), so that bar colours stay true.
    ax.axvspan(*timeline["attack"], color="#ffebee", lw=0, zorder=0)
    ax.axvspan(analysis["breaker"]["fault_on"], analysis["breaker"]["fault_off"], color="#f8bbd0", lw=0, zorder=0)


def charts(results: dict[str, Any], analysis: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    CHARTS.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    end = analysis["end"]
    xs = list(range(end))
    note = "light red: attack; darker: search dependency failing"

    fig, axes = plt.subplots(len(ACTORS), 1, figsize=(11, 10), sharex=True)
    for ax, actor in zip(axes, ACTORS, strict=True):
        data = analysis["series"][actor]
        bottom = [0] * end
        for name in OUTCOMES:
            values = data[name]
            if any(values):
                ax.bar(xs, values, bottom=bottom, width=1.0, align="edge", color=COLOURS[name], label=name)
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        _shade(ax, results, analysis)
        ax.set_ylabel(f"{actor}\nrequests / s")
        ax.set_ylim(0, max(bottom, default=0) * 1.45 + 1)  # room for the legend above the bars
        ax.legend(loc="upper right", fontsize=8, ncol=5)
    axes[0].set_title(f"Requests per second by outcome and actor ({note})")
    axes[-1].set_xlabel("seconds since start")
    fig.tight_layout()
    paths.append(_save(fig, "scenario-outcomes.png"))

    fig, ax = plt.subplots(figsize=(11, 4.5))
    rows = analysis["legit_5s"]
    for i, (label, style) in enumerate((("p50", "-"), ("p95", "--"), ("p99", ":")), start=1):
        ax.plot([r[0] for r in rows], [r[i] for r in rows], style, marker="o", ms=3, label=label)
    baseline_p99 = analysis["legit_p99_ms"]["baseline"]
    ax.axhline(2 * baseline_p99, color="#c62828", ls="-.", lw=1, label=f"2 x baseline p99 ({2 * baseline_p99:.0f} ms)")
    _shade(ax, results, analysis)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (client side)")
    ax.set_xlabel("seconds since start")
    ax.set_title(f"Legitimate users' latency per 5 s ({note})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)  # beside the plot, off the data
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, "scenario-latency.png"))

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    levels = {"closed": 0, "half-open": 1, "open": 2, "forced-open": 2, "forced-closed": 0}
    samples = results["samples"]
    ax1.step([s[1] for s in samples], [levels.get(s[2], -1) for s in samples], where="post", color="#1565c0")
    ax1.set_yticks([0, 1, 2], ["closed", "half-open", "open"])
    ax1.set_ylim(-0.3, 2.3)
    ax1.set_title(f"Search breaker state (sampled every 250 ms), PostgreSQL connections, machine CPU\n({note})")
    _shade(ax1, results, analysis)
    db = results["db_samples"]
    ax2.plot([s[0] for s in db], [s[1] for s in db], label="connections", color="#2e7d32")
    ax2.plot([s[0] for s in db], [s[2] for s in db], label="active", color="#f9a825", lw=0.8)
    ax2.axhline(analysis["db_ceiling"], color="#c62828", ls="--", label="ceiling: workers x DB_POOL_MAX")
    ax2.set_ylim(0, analysis["db_ceiling"] + 4)
    ax2.set_ylabel("connections")
    ax2.legend(loc="upper left", fontsize=8, ncol=3)
    _shade(ax2, results, analysis)
    cpu = [s for s in db if len(s) >= 5]
    ax3.stackplot(
        [s[0] for s in cpu],
        [s[3] for s in cpu],
        [s[4] for s in cpu],
        labels=["busy", "stolen by the hypervisor"],
        colors=["#6d4c41", "#bdbdbd"],
        step="post",
    )
    ax3.set_ylim(0, 105)
    ax3.set_ylabel("CPU %, both cores")
    ax3.set_xlabel("seconds since start")
    ax3.legend(loc="upper left", fontsize=8, ncol=2)
    _shade(ax3, results, analysis)
    fig.tight_layout()
    paths.append(_save(fig, "scenario-breaker.png"))

    fig, axes = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True)
    for ax, actor in zip(axes, ("crawler", "bot", "legit"), strict=True):
        data = analysis["series"][actor]
        limited, unasked = data["429"], analysis["unasked"][actor]
        answered = [sum(data[o][i] for o in OUTCOMES if o not in ("429", "error")) for i in range(end)]
        admitted = [answered[i] - unasked[i] for i in range(end)]
        ax.plot(xs, admitted, label="admitted", color="#2e7d32", drawstyle="steps-post")
        ax.plot(xs, limited, label="429", color="#f9a825", drawstyle="steps-post")
        if any(unasked):
            ax.plot(xs, unasked, label="503 open breaker, limiter not asked", color="#c62828", drawstyle="steps-post")
        _shade(ax, results, analysis)
        ax.set_ylabel(f"{actor}\nper second")
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_title("Rate-limiter decisions per second by actor (search-ip, login-ip, orders-ip)")
    axes[-1].set_xlabel("seconds since start")
    fig.tight_layout()
    paths.append(_save(fig, "scenario-limiter.png"))
    return paths


def _save(fig: Any, name: str) -> Path:
    import matplotlib.pyplot as plt

    path = CHARTS / name
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- Micro-benchmarks --------------------------------------------------------------------------


def micro_benchmarks() -> dict[str, Any]:
    """Rerun bench/run's other benchmarks one after another (or read their last results)."""
    rerun = os.environ.get("BENCH_SCENARIO_MICRO", "1").strip() not in ("0", "false", "no")
    out: dict[str, Any] = {}
    for name in MICRO:
        if not (common.ROOT / "bench" / f"{name}.py").exists():
            continue
        path = common.RESULTS_DIR / f"{name}.json"
        entry: dict[str, Any] = {"rerun": rerun}
        if rerun:
            print(f"==> {name}", flush=True)
            proc = subprocess.run([common.PYTHON, "-m", f"bench.{name}"], cwd=common.ROOT, check=False)
            entry["exit_status"] = proc.returncode
        if path.exists():
            entry["results"] = json.loads(path.read_text())
        out[name] = entry
    return out


def micro_figures(micro: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Return (benchmark, figure, value) rows of the micro-benchmarks' key figures."""
    rows: list[tuple[str, str, str]] = []
    orders = micro.get("orders", {}).get("results")
    if orders:
        app, sql = orders["app"], orders["bare_sql"]
        rows += [
            ("orders", "orders/s through the app (one hot book)", f"{app['per_second']:.1f} (p99 {app['p99_ms']} ms)"),
            ("orders", "orders/s as bare SQL (same row lock)", f"{sql['per_second']:.1f} (p99 {sql['p99_ms']} ms)"),
            ("orders", "ratio app / bare SQL", f"{orders['ratio']:.3f}"),
            ("orders", "server CPU per order", f"{app['server_cpu_ms_per_request']} ms"),
            ("orders", "checks", "OK" if orders["ok"] else "FAILED"),
        ]
    rl = micro.get("ratelimit", {}).get("results")
    if rl:
        rows += [
            ("ratelimit", "req/s without the middleware (A)", f"{rl['A']['per_second_mean']:.1f}"),
            ("ratelimit", "req/s with middleware + 3 policies (B)", f"{rl['B']['per_second_mean']:.1f}"),
            ("ratelimit", "ratio B / A (goal ≥ 0.90)", f"{rl['ratio']:.3f}"),
            ("ratelimit", "Redis round trips per request (B)", f"{rl['B']['redis_round_trips_per_request']:.3f}"),
            ("ratelimit", "checks", "OK" if rl["ok"] else "FAILED"),
        ]
    br = micro.get("breaker", {}).get("results")
    if br:
        rows += [
            ("breaker", "req/s without a breaker (A)", f"{br['A']['per_second_mean']:.1f}"),
            ("breaker", "req/s with a closed breaker (B)", f"{br['B']['per_second_mean']:.1f}"),
            ("breaker", "ratio B / A (overhead; goal ≥ 0.90)", f"{br['ratio']:.3f}"),
            (
                "breaker",
                "open breaker: 503s per second, p50 / p99 (client, 16 clients)",
                f"{br['open']['per_second']:.0f}/s, {br['open']['p50_ms']} / {br['open']['p99_ms']} ms",
            ),
            ("breaker", "open breaker: server CPU per rejection", f"{br['open']['server_cpu_ms_per_request']} ms"),
            (
                "breaker",
                "open breaker: Redis round trips per rejection",
                f"{br['open']['redis_round_trips_per_request']:.3f}",
            ),
            ("breaker", "checks", "OK" if br["ok"] else "FAILED"),
        ]
    for name, entry in micro.items():
        if entry.get("results") is None:
            rows.append((name, "results", "missing"))
        elif entry.get("exit_status"):
            rows.append((name, "exit status", str(entry["exit_status"])))
        rows.append((name, "finished at", str((entry.get("results") or {}).get("finished_at", "?"))))
    return rows


# --- Report ------------------------------------------------------------------------------------


def _table(header: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def assertion_table(analysis: dict[str, Any]) -> str:
    width = max(len(a["assertion"]) for a in analysis["assertions"])
    lines = [f"{'':4} {'assertion':{width}}  measured  (limit)"]
    for a in analysis["assertions"]:
        lines.append(f"{'PASS' if a['ok'] else 'FAIL'} {a['assertion']:{width}}  {a['measured']}  ({a['limit']})")
    return "\n".join(lines)


def _fmt(t: float | None, digits: int = 2) -> str:
    return "n/a" if t is None else f"{t:.{digits}f}"


def markdown(results: dict[str, Any], analysis: dict[str, Any], micro: dict[str, Any], charts: list[Path]) -> str:
    m, cfg, load = results["machine"], results["config"], results["load"]
    tl, rates, br = cfg["timeline"], cfg["rates"], analysis["breaker"]
    out: list[str] = [
        "# Benchmarks",
        "",
        "Generated by `bench/run scenario` (bench/scenario.py); do not edit by hand. Every figure below",
        "comes from one run on the machine described here, on loopback, with PostgreSQL and Redis on the",
        "same two cores as the app and the load generator: read the absolute numbers as this machine's,",
        "the ratios and the pass/fail verdicts as the point.",
        "",
        "## Machine",
        "",
        *_table(
            ["item", "value"],
            [
                ("CPUs (nproc)", m["nproc"]),
                ("CPU", m["cpu"]),
                ("RAM", f"{m['ram_gib']} GiB"),
                ("load average (1 min) at start", m["loadavg_1m_at_start"]),
                ("CPU probe (fixed Python loop, best of 3)", f"{m.get('cpu_probe_ms', 'n/a')} ms"),
                ("OS", m["platform"]),
                ("Python", m["python"]),
                ("Django", m["django"]),
                ("PostgreSQL", m["postgresql"]),
                ("Redis", m["redis"]),
                ("gunicorn", m["gunicorn"]),
            ],
        ),
        "",
        "## Commands",
        "",
        "```sh",
        "bench/run scenario                  # this report: the scenario, then the micro-benchmarks",
        "BENCH_SCENARIO_MICRO=0 bench/run scenario   # the scenario only; reuse bench/results/*.json",
        "bench/run orders ratelimit breaker  # the micro-benchmarks alone",
        "```",
        "",
        f"Server: `{cfg['server_command']}` on the scenario's own PostgreSQL database and a private",
        "redis-server, with the default policies of the data migrations, as read from the scenario's database: "
        + "; ".join(
            f"{name} {policy_text(p)} per {p['key']}"
            + (f" on {p['methods']} " if p["methods"] else " on ")
            + f"`{p['pattern']}`"
            for name, p in cfg["policies"]["ratelimits"].items()
        )
        + "; "
        + "; ".join(
            f"breaker `{name}`: {b['failure_threshold']} consecutive failures or {b['failure_rate']:g}% of the last "
            f"{b['window_size']} after {b['minimum_calls']}, slow {b['slow_call_ms']} ms, open {b['open_seconds']} s, "
            f"{b['half_open_max_calls']} half-open trials"
            for name, b in cfg["policies"]["breakers"].items()
        )
        + ".",
        "",
        "Server-side timings come from two places. Every response the resilience middleware decided carries",
        '`Server-Timing: resilience;dur=<ms>;desc="admitted"|"refused"`: for a refusal, the time from the',
        "middleware receiving the request to the refusal being ready (no view; one Redis round trip, or none when",
        "the worker already knows the breaker is open or that Redis refuses the client's key for a while yet, see",
        "resilience/hints.py). gunicorn's",
        "access log gives each request's service time (`%(D)s`, matched by request id), which also counts the",
        "time the thread waits for the GIL while the worker's other threads run.",
        "",
        "## Scenario: under attack",
        "",
        f"Seed: {cfg['books']} demo books, {len(cfg['hot_books'])} hot books with {cfg['hot_stock']} copies each, "
        f"{cfg['customers']} customers with tokens, staff ({cfg['seed_seconds']} s).",
        "",
        *_table(
            ["time (s)", "what"],
            [
                (f"{tl['warmup'][0]:g}–{tl['warmup'][1]:g}", "warm-up: legitimate users only, not judged for latency"),
                (f"{tl['baseline'][0]:g}–{tl['baseline'][1]:g}", "baseline: legitimate users only"),
                (
                    f"{tl['attack'][0]:g}–{tl['attack'][1]:g}",
                    f"attack: a crawler searching at {rates['crawler_rate']:g}/s from one address; a "
                    f"credential-stuffing bot at {rates['bot_rate']:g}/s from one address (wrong passwords for "
                    "leaked user names, so every admitted attempt costs a full password hash)",
                ),
                (
                    ", ".join(f"{s:g}" for s in tl["spikes"]),
                    f"order spikes: {cfg['spike_customers']} customers, each from its own address on a new "
                    f"connection, order 1–2 copies of a hot book within {tl['spike_seconds']:g} s",
                ),
                (
                    f"{tl['fault_on']:g}–{tl['fault_off']:g}",
                    "the search dependency fails (staff `PUT` / `DELETE /api/ops/faults/search`)",
                ),
                (f"{tl['attack'][1]:g}–{tl['end']:g}", "cool-down: legitimate users only"),
            ],
        ),
        "",
        f"Legitimate users: {cfg['customers']} customers, each with its own address in `X-Forwarded-For` "
        f"(TRUSTED_PROXY_COUNT=1), {rates['legit_rate']:g} actions/s all together (Poisson arrivals, each user one "
        "action at a time on its own keep-alive connection): 28% list a page, 25% open a book, 30% search, "
        "13% order one copy with an `Idempotency-Key` (a quarter of them a hot book; one order in ten is "
        "retried with the same key and must be replayed), 4% cancel one of their orders. Success is a 2xx, "
        "or a 409 insufficient-stock answer to an order.",
        "",
        "### Assertions",
        "",
        *_table(
            ["", "assertion", "measured", "limit"],
            [
                ("PASS" if a["ok"] else "**FAIL**", a["assertion"], a["measured"], a["limit"])
                for a in analysis["assertions"]
            ],
        ),
        "",
        f"The failure window used above runs from the fault switching on ({br['failure_window'][0]:.2f} s) to the "
        f"first breaker sample that reads closed after it was switched off ({br['failure_window'][1]:.2f} s); "
        "legitimate searches inside it are left out of the success rate, and every legitimate request inside it "
        "out of the outside-the-window p99.",
        "",
        "### Requests per actor by outcome",
        "",
    ]
    outcome_cols = [o for o in OUTCOMES if any(o in c for c in analysis["counts"].values())]
    out += _table(
        ["actor", "requests", *outcome_cols],
        [(actor, sum(c.values()), *(c.get(o, 0) for o in outcome_cols)) for actor, c in analysis["counts"].items()],
    )
    out += ["", "Legitimate users by endpoint:", ""]
    ep_cols = [o for o in OUTCOMES if any(o in c for c in analysis["legit_endpoints"].values())]
    out += _table(
        ["endpoint", "requests", *ep_cols],
        [(ep, sum(c.values()), *(c.get(o, 0) for o in ep_cols)) for ep, c in analysis["legit_endpoints"].items()],
    )
    if analysis["legit_failures"]:
        out += ["", "Legitimate requests counted as failures: "
                + ", ".join(f"{k} × {v}" for k, v in analysis["legit_failures"].most_common())]  # fmt: skip
    cr, bot = analysis["crawler"], analysis["bot"]
    out += [
        "",
        f"Crawler: {cr['sent']} searches sent, {cr['admitted']} admitted by search-ip, {cr['limited']} refused "
        f"with 429, {cr['known_open']} refused with 503 by a worker that knew the search breaker was open (without "
        "asking the limiter, so they spend no quota); the "
        f"most admitted requests surely decided inside one 60 s span was {cr['max_in_any_period']} (by send time "
        f"{cr['max_in_any_period_by_send']}: requests queued in the server are decided later than sent; admitted "
        f"between {cr['admitted_span']} s). Bot: "
        f"{bot['sent']} token requests, {bot['admitted']} admitted (answered 401), {bot['limited']} refused; "
        f"its requests were decided within {bot['decision_span']} s, in which login-ip ({bot['policy_text']}) "
        f"admits at most {bot['bound_over_span']} (for a token bucket: the burst, then one per period / limit); "
        f"admitted between {bot['admitted_span']} s (send times).",
        "",
        "### Latency of legitimate users per phase (client side, ms)",
        "",
    ]
    out += _table(
        ["phase", "requests", "count", "p50", "p95", "p99", "max", "CPU busy / stolen %, busiest 250 ms"],
        [
            (
                r["phase"],
                r["requests"],
                r["count"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["max_ms"],
                f"{r['cpu'][0]:g} / {r['cpu'][1]:g}, {r['cpu'][2]:g}" if r["requests"] == "all" else "",
            )
            for r in analysis["phases"]
        ],
    )
    out += [
        "",
        "CPU: the whole machine's two cores (server, PostgreSQL, Redis and the load generator together), "
        "sampled every 250 ms; busy is user + system time, stolen is time the hypervisor gave the cores to "
        "other guests.",
    ]
    out += [
        "",
        "### Search breaker timeline",
        "",
        f"Fault in force from {br['fault_on']:.3f} s (the staff PUT was sent; it was answered at "
        f"{br['fault_on_answered']:.3f} s) until the DELETE was sent at {br['fault_off']:.3f} s. The breaker opened at "
        f"{_fmt(br['opened_store'], 3)} s by the store's own `opened_at` (Redis's clock), "
        f"{_fmt(br['open_latency'], 3)} s after the fault; the first sample reading open was received at "
        f"{_fmt(br['first_open_sample'], 3)} s and the first 503 temporary-reduced-capacity at "
        f"{_fmt(br['first_503'], 3)} s. Closed again by {_fmt(br['closed_at'], 3)} s. "
        f"{br['dependency_failures']} searches failed with 503 dependency-unavailable before or between the "
        f"breaker's open periods; {br['rejections']} were refused by the open breaker.",
        "",
    ]
    out += _table(
        ["time (s)", "state", "generation"],
        [(f"{t['t']:.2f}", t["state"], t["generation"]) for t in br["transitions"]],
    )
    out += [
        "",
        "Rejections while open, three views of the same requests (ms):",
        "",
        *_table(
            ["measure", "what it counts", "requests", "p50", "p99"],
            [
                (label, what, br[count], br[f"{series}_ms"][50], br[f"{series}_ms"][99])
                for label, what, count, series in (
                    (
                        "refusal (Server-Timing)",
                        "middleware receives the request → 503 ready: no view, at most one Redis round trip",
                        "reject_decision_matched",
                        "reject_decision",
                    ),
                    (
                        "refusal, its thread's CPU (Server-Timing resilience-cpu)",
                        "the CPU the refusing thread itself used in that span",
                        "reject_cpu_matched",
                        "reject_cpu",
                    ),
                    (
                        "gunicorn service time",
                        "plus WSGI and the other middleware, and waiting for the GIL among the worker's threads",
                        "reject_server_matched",
                        "reject_server",
                    ),
                    (
                        "client side",
                        "plus the accept queue, waiting for a free thread, the loopback and the generator's own loop",
                        "rejections",
                        "reject_client",
                    ),
                )
            ],
        ),
        "",
        "The assertion uses the refusal's own cost: that is what the breaker adds per rejected request. The "
        "other two add time the request spends waiting for a CPU on two cores shared by four workers, "
        "PostgreSQL, Redis and the load generator; a refusal waits like any other request, but does not cause "
        f"the wait. For comparison: the middleware's decision for an admitted search p50 / p99 "
        f"{br['search_decision_ms'][50]} / {br['search_decision_ms'][99]} ms, for a 429 refusal "
        f"{br['limited_decision_ms'][50]} / {br['limited_decision_ms'][99]} ms; gunicorn's service time of a "
        f"successful search {br['search_ok_server_ms'][50]} / {br['search_ok_server_ms'][99]} ms, of a 429 "
        f"{br['limited_server_ms'][50]} / {br['limited_server_ms'][99]} ms.",
        "",
        "### Resources",
        "",
        f"PostgreSQL connections to the scenario database: at most {analysis['db_max_connections']} (ceiling "
        f"{analysis['db_ceiling']} = {cfg['workers']} workers × DB_POOL_MAX {cfg['db_pool_max']}), sampled every "
        f"250 ms. Redis ran {_script_calls_text(results)}. "
        f"CPU over the run: server {results['server_cpu_seconds']} s, Redis {results['redis_cpu_seconds']} "
        f"s, load generator {load['cpu_seconds']} s over {load['wall_seconds']} s (one process; cyclic garbage "
        f"collector {load.get('generator', {}).get('gc', 'on')}, nice "
        f"{load.get('generator', {}).get('niceness', 0)}: its own pauses stay out of the latencies). Open-loop sends "
        f"more than 50 ms behind schedule: {load['late'] or 'none'}. Connections opened by the crawler "
        f"{load['crawler_connections']}, by the bot {load['bot_connections']}.",
        "",
        "Rate-limit decisions counted by the app (`/metrics`, summed over the workers):",
        "",
    ]
    out += _table(
        ["series", "value"],
        [(k.replace("|", "\\|"), int(v)) for k, v in sorted(results["metrics"].items())],
    )
    out += ["", "### Charts", ""]
    captions = {
        "scenario-outcomes.png": "Requests per second by outcome, per actor",
        "scenario-latency.png": "Legitimate users' latency percentiles per 5 s",
        "scenario-breaker.png": "Search breaker state, PostgreSQL connections and machine CPU",
        "scenario-limiter.png": "Rate-limiter decisions per second by actor",
    }
    for path in charts:
        out += [f"![{captions.get(path.name, path.name)}](charts/{path.name})", ""]
    out += ["## Micro-benchmarks", ""]
    rows = micro_figures(micro)
    if rows:
        out += _table(["benchmark", "figure", "value"], rows)
        out += [
            "",
            "orders: one hot book, 32 clients, through gunicorn vs the bare SQL transaction every order needs on the "
            "same row lock (bench/orders.py). ratelimit: a cheap GET with and without the resilience middleware "
            "deciding three policies in one Lua round trip (bench/ratelimit.py). breaker: the same GET with and "
            "without a closed breaker, then forced open (bench/breaker.py).",
        ]
    else:
        out.append("No micro-benchmark results.")
    notes = results.get("notes") or []
    if notes:
        out += ["", "## Notes", "", *notes]
    return "\n".join(out) + "\n"


def finish(results: dict[str, Any], extra_notes: Callable[[dict[str, Any]], list[str]] | None = None) -> int:
    analysis = analyse(results)
    print(assertion_table(analysis), flush=True)
    paths = charts(results, analysis)
    if extra_notes is not None:
        results["notes"] = extra_notes(analysis)
    # The samples are small and, with bench/results/scenario.records.json, enough to redraw the charts.
    summary = {k: v for k, v in results.items() if k not in ("records", "samples", "server_timings")}
    summary["analysis"] = {k: v for k, v in analysis.items() if k not in ("series", "legit_5s")}
    common.write_results("scenario", summary)
    micro = micro_benchmarks()
    DOCS.mkdir(exist_ok=True)
    (DOCS / "benchmarks.md").write_text(markdown(results, analysis, micro, paths))
    print(f"report: docs/benchmarks.md; charts: {', '.join(str(p.relative_to(common.ROOT)) for p in paths)}")
    print(assertion_table(analysis))
    return 0 if analysis["ok"] else 1
