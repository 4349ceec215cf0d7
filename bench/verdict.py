"""Judge a scenario run: named checks of the run's facts, and the figures the report shows around them."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from bench.lib import check, listing, percentile, table

OUTCOMES = ("2xx", "409 out of stock", "401", "429", "503 breaker open", "503 dependency failed", "503 bulkhead full")
OUTCOMES += ("other", "5xx", "error")
DESIGNED = {(409, "insufficient-stock"): "409 out of stock", (503, "temporary-reduced-capacity"): "503 breaker open"}
DESIGNED[(503, "dependency-unavailable")] = "503 dependency failed"  # the failing search's own answer
DESIGNED[(503, "concurrency-limit")] = "503 bulkhead full"
REJECT_P99_MS, OPEN_WITHIN_S, CLOSE_SLACK_S = 5.0, 1.0, 5.0
Record = dict[str, Any]
Judged = tuple[Any, str, str, dict[str, Any]]  # ok, measured, limit, figures
CHECKS = {  # each check, a method of Facts, and its name in the report, in the report's order
    "crawler_budget": "crawler admitted within search-ip",
    "bot_budget": "bot admitted within login-ip",
    "legit_success": "legitimate success rate outside the failure window",
    "legit_p99": "legitimate p99 outside the failure window vs baseline",
    "slowdown_p99": "list, detail and order p99 in the search slowdown vs baseline; slow searches ≤ bulkhead",
    "breaker_opens": "search breaker opens after the failure starts",
    "rejects_fast": "open breaker rejects fast (server side, p99)",
    "breaker_closes": "search breaker closes after recovery",
    "no_unexpected": "no 5xx but the designed 503s, no transport errors",
    "spike_answers": "spike customers: 201 or 409 only",
    "orders_exist": "every 201 order exists, none without a 201",
    "stock_conserved": "stock conserved on every book (no loss, no oversell)",
    "db_connections": "DB connections never above workers x DB_POOL_MAX",
}


def outcome(r: Record) -> str:
    status = r["status"]
    if status in (0, 401, 429) or 200 <= status < 300:
        return {0: "error", 401: "401", 429: "429"}.get(status, "2xx")
    return DESIGNED.get((status, r["problem"])) or ("5xx" if status >= 500 else "other")


def limiter_admitted(r: Record) -> bool:
    """Return True if the rate limiter decided the request and let it through: the answer carries its quota."""
    return r["status"] not in (0, 429) and r["quota"]


def latency_ms(r: Record) -> float:
    return (r["received"] - r["sent"]) * 1000


def pcts(values: list[float], *qs: float) -> dict[float, float]:
    return {q: round(percentile(values, q), 2) for q in qs}


def policy_text(p: dict[str, Any]) -> str:
    """Describe a rate-limit policy: "20 per 600 s, token bucket, burst 3"."""
    burst = f", burst {p['burst'] or p['limit']}" if p["algorithm"] == "token_bucket" else ""
    return f"{p['limit']} per {p['period']} s, {p['algorithm'].replace('_', ' ')}{burst}"


def admissible(p: dict[str, Any], span: float) -> int:
    """Return the most requests of one key the policy can admit in any `span` seconds (docs/benchmarks.md.in)."""
    limit, period = p["limit"], float(p["period"])
    if p["algorithm"] == "token_bucket":
        return (p["burst"] or limit) + math.floor(span / (period / limit) + 1e-9) if limit else 0
    return limit * (math.ceil(span / period) + (p["algorithm"] == "fixed_window"))


class Facts:
    """What the checks read: the records by actor, the failure window and the search breaker's timeline."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results, self.records, self.cfg = results, results["records"], results["config"]
        self.tl, events, samples = self.cfg["timeline"], results["load"]["events"], results["samples"]
        self.by_actor: dict[str, list[Record]] = defaultdict(list)
        for r in self.records:
            r["outcome"] = outcome(r)
            self.by_actor[r["actor"]].append(r)
        self.legit, self.timings = self.by_actor["legit"], results["server_timings"]
        # The fault is in force somewhere between the staff PUT's send and its answer: the window opens at the
        # send, and the breaker's opening is timed from it too (the stricter choice).
        self.fault_on, self.fault_on_answered = events.get("fault_on") or [self.tl["fault_on"]] * 2
        self.fault_off, self.fault_off_received = events.get("fault_off") or [self.tl["fault_off"]] * 2
        # Searches sent from the slow fault's PUT until its DELETE was answered may crawl, and until the last slow
        # call ends after that may meet a full bulkhead.
        slow_off = (events.get("slow_off") or [0, self.tl["slow_off"]])[1] + self.cfg["slow_ms"] / 1000
        self.slowdown = ((events.get("slow_on") or [self.tl["slow_on"]])[0], slow_off)
        self.transitions = [s for n, s in enumerate(samples) if not n or s[2:4] != samples[n - 1][2:4]]
        opened = [s for s in samples if s[1] >= self.fault_on and s[2] == "open"]
        self.rejected = [r for r in self.records if r["outcome"] == "503 breaker open"]
        self.first_503 = min((r["received"] for r in self.rejected if r["received"] >= self.fault_on), default=None)
        self.first_open_sample = opened[0][1] if opened else None
        # When it opened: the store's own opened_at (Redis's clock), on the load's clock through wall_t0.
        wall = [s[4] - results["load"]["wall_t0"] for s in opened if s[4]]
        self.opened_store = min((t for t in wall if t >= self.fault_on - 1), default=None)
        bounds = [t for t in (self.first_open_sample, self.first_503) if t is not None]
        self.opened_at = self.opened_store if self.opened_store is not None else min(bounds, default=None)
        self.closed_at = next((s[1] for s in samples if s[0] >= self.fault_off_received and s[2] == "closed"), None)
        self.open_seconds = self.cfg["policies"]["breakers"]["search"]["open_seconds"]
        late_end = self.fault_off_received + self.open_seconds + CLOSE_SLACK_S
        self.failure = (self.fault_on, self.closed_at if self.closed_at is not None else late_end)

    def in_failure(self, r: Record) -> bool:
        return self.failure[0] <= r["sent"] < self.failure[1]

    def excused(self, r: Record) -> bool:
        """Return True for a search made while search was failing or crawling."""
        return r["endpoint"] == "search" and (self.in_failure(r) or self.slowdown[0] <= r["sent"] < self.slowdown[1])

    def legit_ms(self, keep: Callable[[Record], bool]) -> list[float]:
        return [latency_ms(r) for r in self.legit if keep(r)]

    def baseline_p99(self, keep: Callable[[Record], bool] = lambda r: True) -> float:
        (_, warm), (attack, _) = self.tl["warmup"], self.tl["attack"]
        return percentile(self.legit_ms(lambda r: warm <= r["sent"] < attack and keep(r)), 99)

    def served_ms(self, records: Iterable[Record]) -> list[float]:
        """Return gunicorn's service times (ms) of the records, from the access log."""
        return [self.timings[r["rid"]][1] / 1000 for r in records if r["rid"] in self.timings]

    def cpu(self, lo: float, hi: float) -> list[float]:
        """Return the machine's mean CPU busy %, stolen %, and busiest 250 ms (busy + stolen) in [lo, hi)."""
        inside = [x for x in self.results["db_samples"] if lo < x[0] <= hi + 0.25] or [[0, 0, 0, 0, 0]]
        return [round(sum(x[i] for x in inside) / len(inside), 1) for i in (3, 4)] + [max(x[3] + x[4] for x in inside)]

    def budget(self, actor: str, policy_name: str) -> dict[str, Any]:
        """Return what the limiter admitted of an actor against what the policy allows."""
        p, sent = self.cfg["policies"]["ratelimits"][policy_name], self.by_actor[actor]
        period, per_period = float(p["period"]), admissible(p, float(p["period"]))
        admitted = sorted((r for r in sent if limiter_admitted(r)), key=lambda r: r["sent"])
        # The server decided each request between its send and its answer. A certain violation: per_period + 1
        # admitted requests that all reached the server within one period. surely: the most admitted requests
        # surely decided inside one period; by_send: the most sent inside one (queueing can push those over).
        violation, surely, by_send = False, 0, 0
        for i, first in enumerate(admitted):
            group = admitted[i : i + per_period + 1]
            violation |= len(group) > per_period and max(r["received"] for r in group) - first["sent"] < period
            inside = [r for r in admitted[i:] if r["sent"] < first["sent"] + period]
            by_send = max(by_send, len(inside))
            surely = max(surely, sum(r["received"] < first["sent"] + period for r in inside))
        span = max((r["received"] for r in sent), default=0) - min((r["sent"] for r in sent), default=0)
        out = {"policy": policy_name, "text": policy_text(p), "period": p["period"], "per_period": per_period}
        out |= {"sent": len(sent), "admitted": len(admitted), "limited": sum(r["status"] == 429 for r in sent)}
        out["not_asked"] = sum(r["status"] not in (0, 429) and not r["quota"] for r in sent)
        out |= {"violation": violation, "max_in_any_period": surely, "max_by_send": by_send, "span": round(span, 2)}
        out |= {"bound_over_span": admissible(p, span), "admitted_sent": [round(r["sent"], 2) for r in admitted[:40]]}
        return out

    def crawler_budget(self) -> Judged:
        b = self.budget("crawler", "search-ip")
        ok = not b["violation"] and b["max_in_any_period"] <= b["per_period"] and b["admitted"] <= b["bound_over_span"]
        measured = f"{b['admitted']} of {b['sent']} admitted; at most {b['max_in_any_period']} surely decided in one "
        limit = f"≤ {b['per_period']} in any {b['period']} s, ≤ {b['bound_over_span']} over the attack ({b['text']})"
        return ok, measured + f"{b['period']} s", limit, b

    def bot_budget(self) -> Judged:
        b = self.budget("bot", "login-ip")
        admitted = [r for r in self.by_actor["bot"] if r["status"] not in (0, 429)]
        b["admitted_server_ms"] = pcts(self.served_ms(admitted), 50, 100)
        limit = f"≤ {b['bound_over_span']}, what the policy ({b['text']}) admits in that span"
        ok = not b["violation"] and b["admitted"] <= b["bound_over_span"]
        return ok, f"{b['admitted']} of {b['sent']} admitted over {b['span']:.1f} s", limit, b

    def legit_success(self) -> Judged:
        def ok(r: Record) -> bool:
            if r["endpoint"] == "order-replay":  # the first order's id again, marked as a replay
                x = r["extra"] or []
                return r["status"] == 201 and len(x) == 5 and x[3] == x[2] and x[4] is True
            return r["outcome"] == "2xx" or (r["endpoint"] == "order" and r["outcome"] == "409 out of stock")

        judged = [r for r in self.legit if not self.excused(r)]
        failed = Counter(f"{r['endpoint']} {r['status']} {r['problem']}".strip() for r in judged if not ok(r))
        good = len(judged) - sum(failed.values())
        rate = good / len(judged) if judged else 0.0
        listed = ", ".join(f"{k} × {v}" for k, v in failed.most_common())
        return rate >= 0.99, f"{rate:.2%} ({good} / {len(judged)})", "≥ 99%", {"failures": listed}

    def legit_p99(self) -> Judged:
        warm, base = self.tl["warmup"][1], self.baseline_p99()
        kept = [r for r in self.legit if not self.in_failure(r) and not self.excused(r)]
        outside = percentile([latency_ms(r) for r in kept if r["sent"] >= warm], 99)
        windows = []  # 2 s windows outside the failure: [start, requests, p50, p99, CPU busy, stolen, busiest]
        for lo in range(int(warm), int(self.tl["end"]), 2):
            lat = [latency_ms(r) for r in kept if lo <= r["sent"] < lo + 2]
            windows += [[lo, len(lat), *pcts(lat, 50, 99).values(), *self.cpu(lo, lo + 2)]] if len(lat) >= 10 else []
        worst = sorted(windows, key=lambda w: -w[3])[:8]
        figures = {"baseline_ms": round(base, 1), "outside_ms": round(outside, 1), "worst_2s_windows": worst}
        measured = f"{outside:.1f} ms vs {base:.1f} ms (x{outside / base if base else 0:.2f})"
        return outside <= 2 * base, measured, "≤ 2x baseline", figures

    def slowdown_p99(self) -> Judged:
        (lo, hi), base = self.slowdown, self.baseline_p99(lambda r: r["endpoint"] != "search")
        slow = percentile(self.legit_ms(lambda r: lo <= r["sent"] < hi and r["endpoint"] != "search"), 99)
        peak, slots = self.results["load"]["events"].get("slow_peak"), self.cfg["policies"]["bulkheads"]["search"]
        searches = [r for r in self.legit if r["endpoint"] == "search" and lo <= r["sent"] < hi]
        figures = {"baseline_ms": round(base, 1), "slowdown_ms": round(slow, 1), "peak": peak, "bulkhead": slots}
        figures |= {"legit_searches": listing(Counter(r["outcome"] for r in searches))}
        figures["legit_search_ms"] = pcts([latency_ms(r) for r in searches if r["outcome"] == "2xx"], 50, 99)
        measured = f"{slow:.1f} ms vs {base:.1f} ms (x{slow / base if base else 0:.2f}); at most {peak} slow at once"
        ok = slow <= 2 * base and peak is not None and 0 < peak <= slots["max_in_flight"]
        return ok, measured, f"≤ 2x baseline; ≤ {slots['max_in_flight']}", figures

    def breaker_opens(self) -> Judged:
        took = self.opened_at - self.fault_on if self.opened_at is not None else math.inf
        first = f"{self.first_503 - self.fault_on:.3f} s" if self.first_503 is not None else "n/a"
        on = self.fault_on
        after = [r for r in self.records if r["endpoint"] == "search" and on <= r["sent"] < on + 2]
        figures = {"searches_in_first_second": sum(r["sent"] < on + 1 for r in after)}
        figures["legit_search_ms_2s_after"] = pcts([latency_ms(r) for r in after if r["actor"] == "legit"], 50, 99)
        measured = f"{took:.3f} s after the fault PUT was sent (store's opened_at; first 503 {first})"
        return took <= OPEN_WITHIN_S, measured, f"≤ {OPEN_WITHIN_S:g} s", figures

    def rejects_fast(self) -> Judged:
        timed = [r["timing"] for r in self.rejected if r["timing"]]
        views = {"decision": [t[0] for t in timed if t[1] == "refused"]}
        views["cpu"] = [t[2] for t in timed if t[2] is not None]
        views |= {"server": self.served_ms(self.rejected), "client": [latency_ms(r) for r in self.rejected]}
        # Every rejection must carry its timing; a missing one counts as infinitely slow.
        n = len(views["decision"])
        p99 = percentile(views["decision"], 99) if n and n == len(self.rejected) else math.inf
        figures = {k: {"count": len(v), **pcts(v, 50, 99, 100)} for k, v in views.items()}
        measured = f"{p99:.2f} ms refusal (Server-Timing, {n} of {len(self.rejected)}); "
        measured += f"{figures['server'][99]:.2f} ms gunicorn service time; {figures['client'][99]:.2f} ms client"
        return p99 < REJECT_P99_MS, measured, f"< {REJECT_P99_MS:g} ms", figures

    def breaker_closes(self) -> Judged:
        took = self.closed_at - self.fault_off if self.closed_at is not None else math.inf
        limit = f"≤ {self.open_seconds} + {CLOSE_SLACK_S:g} s"
        return took <= self.open_seconds + CLOSE_SLACK_S, f"{took:.2f} s after the fault was switched off", limit, {}

    def no_unexpected(self) -> Judged:
        def unexpected(r: Record) -> bool:
            if r["outcome"] in ("error", "5xx") or (r["status"] == 503 and r["endpoint"] != "search"):
                return True
            # The failing dependency's own 503 may only answer a search made while the fault was on.
            in_fault = r["received"] >= self.fault_on and r["sent"] <= self.fault_off_received
            return r["outcome"] == "503 dependency failed" and not in_fault

        bad = [r for r in self.records if unexpected(r)]
        first = [{k: r[k] for k in ("actor", "endpoint", "sent", "status", "problem")} for r in bad[:20]]
        return not bad, str(len(bad)), "0", {"first": first}

    def spike_answers(self) -> Judged:
        spike = self.by_actor["spike"]
        good = sum(r["outcome"] in ("2xx", "409 out of stock") for r in spike)
        return spike and good == len(spike), f"{good} / {len(spike)}", "all", {}

    def orders_exist(self) -> Judged:
        db = self.results["db_checks"]
        missing, unanswered = len(db["orders_201_missing"]), len(db["orders_without_201"])
        measured = f"{db['orders_201'] - missing} / {db['orders_201']} found; {unanswered} unanswered"
        return not missing and not unanswered, measured, "all, 0", db

    def stock_conserved(self) -> Judged:
        db = self.results["db_checks"]
        measured = f"{db['books_checked'] - len(db['stock_broken'])} / {db['books_checked']} books; "
        held = not (db["stock_broken"] or db["negative_stock"] or db["cancelled_not_applied"])
        return held, measured + f"{db['cancelled_200']} cancels applied", "initial = current + sold", {}

    def db_connections(self) -> Judged:
        samples, ceiling = self.results["db_samples"], self.cfg["db_ceiling"]
        most = max((s[1] for s in samples), default=0)
        return most <= ceiling, f"max {most} over {len(samples)} samples", f"≤ {ceiling}", {"max": most}


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """Return the checks, the figures the report shows around them, and the figures kept per server shape."""
    f = Facts(results)
    by = {name: getattr(f, name)() for name in CHECKS}
    checks = [check(CHECKS[name], *x[:3], **x[3]) for name, x in by.items()]
    fig = {name: x[3] for name, x in by.items()}  # each check's figures
    warm, (start, end) = f.tl["warmup"][1], f.tl["attack"]
    phases = {"warm-up (not judged)": (0, warm), "baseline": (warm, start), "attack, before the failure": (start,
              f.failure[0]), "failure window": f.failure, "attack, after recovery": (f.failure[1], f.slowdown[0]),
              "search slowdown, bulkhead on": (f.slowdown[0], end), "cool-down": (end, f.tl["end"] + 60)}  # fmt: skip
    rows = []
    for label, (lo, hi) in phases.items():
        for kind, eps in {"all": None, "search": {"search"}, "orders": {"order", "order-replay", "cancel"}}.items():
            lat = f.legit_ms(lambda r, lo=lo, hi=hi, e=eps: lo <= r["sent"] < hi and (not e or r["endpoint"] in e))
            cpu = "{:g} / {:g}, {:g}".format(*f.cpu(lo, hi)) if kind == "all" else ""
            rows.append([label, kind, len(lat), *pcts(lat, 50, 95, 99, 100).values(), cpu])
    by_endpoint = {e: [r for r in f.legit if r["endpoint"] == e] for e in dict.fromkeys(r["endpoint"] for r in f.legit)}
    timed = {"search": [r for r in f.records if r["endpoint"] == "search" and r["status"] == 200]}
    timed["limited"] = [r for r in f.records if r["status"] == 429]
    rej = fig["rejects_fast"]
    views = {"refusal (Server-Timing)": "decision", "its thread's CPU": "cpu", "gunicorn service time": "server",
             "client side": "client"}  # fmt: skip
    p99 = {r[0]: r[5] for r in rows if r[1] == "all"}
    shape = {"baseline_p99_ms": fig["legit_p99"]["baseline_ms"], "outside_p99_ms": fig["legit_p99"]["outside_ms"]}
    shape |= {f"{k}_p99_ms": p99[p] for k, p in zip(("attack", "failure", "after"), list(phases)[2:5], strict=True)}
    shape |= {"slowdown_p99_ms": fig["slowdown_p99"]["slowdown_ms"], "db_max_connections": fig["db_connections"]["max"]}
    moments = "fault_on fault_on_answered fault_off opened_store first_open_sample first_503 closed_at".split()
    fault = {k: getattr(f, k) for k in moments} | {"rejections": len(f.rejected)}
    fault["dependency_failures"] = sum(r["outcome"] == "503 dependency failed" for r in f.records)
    timing = {f"{k}_decision": pcts([r["timing"][0] for r in rs if r["timing"]], 50, 99) for k, rs in timed.items()}
    timing |= {f"{k}_served": pcts(f.served_ms(rs), 50, 99) for k, rs in timed.items()}
    columns = ["phase", "requests", "count", "p50", "p95", "p99", "max", "CPU busy / stolen %, busiest 250 ms"]
    report = {
        **fig, "window": f.failure, "slowdown": f.slowdown, "fault": fault, "requests": len(f.records),
        "scripts_per_request": round(results["redis_script_calls"] / max(len(f.records), 1), 2),
        "timing": {k: " / ".join(map(str, v.values())) for k, v in timing.items()},
        "outcomes": outcome_table("actor", f.by_actor), "endpoints": outcome_table("endpoint", by_endpoint),
        "transitions": table(["time (s)", "state", "generation"], [[f"{s[1]:.2f}", *s[2:4]] for s in f.transitions]),
        "views": table(["measure", "requests", "p50", "p99", "max"], [[k, *rej[v].values()] for k, v in views.items()]),
        "metrics": table(["series", "value"], sorted(results["metrics"].items())),
        "policies": "; ".join(f"{n} {policy_text(p)} per {p['key']} on {p['methods']} `{p['pattern']}`"
                              for n, p in f.cfg["policies"]["ratelimits"].items()).replace("  ", " "),
        "worst_windows": table(["start s", "requests", "p50", "p99", "CPU busy %", "stolen %", "busiest 250 ms"],
                               fig["legit_p99"]["worst_2s_windows"]), "phases": table(columns, rows),
    }  # fmt: skip
    return {"checks": checks, "report": report, "shape_figures": shape, "columns": columns, "rows": rows}


def outcome_table(first: str, groups: dict[str, list[Record]]) -> str:
    """Return a table of each group's records by outcome."""
    counts = {k: Counter(r["outcome"] for r in rs) for k, rs in groups.items()}
    cols = [o for o in OUTCOMES if any(c[o] for c in counts.values())]
    return table([first, "requests", *cols], [[k, sum(c.values()), *(c[o] for o in cols)] for k, c in counts.items()])
