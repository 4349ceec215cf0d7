"""breaker: what a closed circuit breaker costs, how fast an open one refuses (docs/benchmarks.md.in)."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from decimal import Decimal
from typing import Any

from bench import lib
from bench.hotpath import BREAKER, prepare
from tests.live import request

NAME = "breaker"
PATH = "/api/books/"
TALLY = ["Content-Type", "Retry-After", "X-Circuit-Breaker-State"]
PROBLEM = "application/problem+json"
# The commands the product's Lua scripts call: while scripts run, those are not round trips of their own.
LUA = " ".join(f.read_text() for f in (lib.ROOT / "resilience").glob("**/*.lua"))
LUA_COMMANDS = {c.lower() for c in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]", LUA)}


def set_breaker(enabled: bool) -> None:
    """Enable or disable the bench breaker; if that changed it, idle until every worker knows."""
    from resilience.models import CircuitBreakerPolicy
    from resilience.runtime import VERSION_CHECK_INTERVAL

    if CircuitBreakerPolicy.objects.filter(name=BREAKER["name"]).exclude(enabled=enabled).exists():
        policy = CircuitBreakerPolicy.objects.get(name=BREAKER["name"])
        policy.enabled = enabled
        policy.save(update_fields=["enabled", "updated_at"])  # post_save bumps the policy version
        lib.release_db()
        time.sleep(VERSION_CHECK_INTERVAL + 0.25)


def status() -> dict[str, Any]:
    from resilience import services
    from resilience.models import CircuitBreakerPolicy

    (row,) = services.breaker_status(policies=CircuitBreakerPolicy.objects.filter(name=BREAKER["name"]))
    lib.release_db()
    return {k: row[k] for k in ("state", "detail_state", "forced", "generation", "consecutive_failures")}


def responses(run: dict[str, Any]) -> list[tuple[str, list[str], int]]:
    """Return (phase, [status, content type, retry-after, breaker state], count) of a round's responses."""
    return [(k.split("|")[0], k.split("|")[1:], n) for k, n in run["responses"].items()]


def closed_ok(run: dict[str, Any], state: str, previous: str) -> bool:
    """Every response a plain 200 with this config's breaker field; the previous config's only in warm-up."""
    allowed, answers = {"measured": {state}, "warmup": {state, previous}}, responses(run)
    ok = all(f[0] == "200" and not f[1].startswith(PROBLEM) and not f[2] and f[3] in allowed[p] for p, f, _ in answers)
    return ok and not run["errors"]


def measure(server: lib.LiveServer, clients: list[dict[str, Any]], redis: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one round; add server CPU and Redis round trips (scripts, and commands no script issues) per request."""
    with lib.spent(server, redis) as spent:
        r = lib.load(server, clients, warmup=cfg["warmup"], duration=cfg["duration"], tally=TALLY)
    n, calls = max(sum(r["statuses"].values()), 1), spent["redis_calls"]
    scripts = sum(calls.get(s, 0) for s in lib.SCRIPTS)
    # With no script run in the round, nothing was script-internal: every command was sent.
    other = sum(v for k, v in calls.items() if k not in lib.SCRIPTS and not (scripts and k in LUA_COMMANDS))
    closed = sum(count for _, f, count in responses(r) if f[3] == "closed")
    rt = {"redis_rt": round((scripts + other) / n, 3), "other_rt": round(other / n, 3)}
    return r | lib.per_request(spent, n) | rt | {"scripts": scripts, "closed": closed, "seconds": spent["seconds"]}


def main() -> int:
    cfg = lib.knobs(duration=5.0, warmup=1.0, rounds=5, clients=16, workers=4, threads=2)
    with lib.prepared(NAME) as (_, redis):
        # This process applies the forced transitions; the bench output is no place for their log lines.
        logging.getLogger("resilience").setLevel(logging.ERROR)
        from catalog.services import book_create
        from resilience import services
        from resilience.db.guard import SYNC_SECONDS
        from resilience.engine.breaker import State
        from resilience.runtime.outcomes import FLUSH_SECONDS

        book = book_create(isbn="9790000000025", title="Small", price=Decimal("9.99"), stock=5, authors=["B"])
        prepare(PATH, [], {**BREAKER, "enabled": False})
        machine = lib.machine(redis)
        path = f"{PATH}{book.pk}"
        clients = [{"method": "GET", "path": path, "headers": {"Accept": "application/json"}}] * cfg["clients"]
        runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        with lib.server(workers=cfg["workers"], threads=cfg["threads"]) as server:
            set_breaker(True)
            request(server.port, path)  # loads both Lua scripts: no round carries the one-off NOSCRIPT retry
            before = status()
            with lib.spent(server, redis) as whole:
                for label in lib.alternate(["A", "B"], cfg["rounds"]):
                    set_breaker(label == "B")
                    runs[label].append(measure(server, clients, redis, cfg))
                set_breaker(True)
                after_b = status()
                services.breaker_force(names=[BREAKER["name"]], state=State.FORCED_OPEN)
                forced, probe_open = status(), request(server.port, path)
                runs["O"] = [measure(server, clients, redis, cfg)]
                services.breaker_force(names=[BREAKER["name"]], state=None)
                released, probe_released = status(), request(server.port, path)

    labels = {"A": "A: no breaker", "B": "B: breaker closed", "O": "O: breaker forced open (503)"}
    (a, b, o), rows = lib.summarise(labels, runs)
    opened, closed, ab = runs["O"][0], runs["B"], runs["A"] + runs["B"]
    switch = {k: [sum(n for p, f, n in responses(r) if p == "warmup" and f[3] == s) for r in runs[k]]
              for k, s in (("A", "closed"), ("B", ""))}  # fmt: skip
    other = lib.mean(r["other_rt"] for r in closed)
    figures = [
        ["requests/s B / A (goal ≥ 0.90)", lib.ratios(closed, runs["A"])],
        ["server CPU per request A / B; B − A",
         f"{lib.ratio(a['cpu_ms'], b['cpu_ms'])}; {b['cpu_ms'] - a['cpu_ms']:+.3f} ms"],
        ["Redis round trips per request: B (scripts: admission, outcome batches, the database breaker's; other), O, A",
         f"{b['redis_rt']} ({b['redis_rt'] - other:.3f}; {other}), {o['redis_rt']}, {a['redis_rt']}"],
        ["Redis calls per request in B, script-internal included", lib.listing(closed[-1]["by_command"])],
        ["the database breaker's scripts per second (A)", lib.mean(r["scripts"] / r["seconds"] for r in runs["A"])],
        ["switch-over responses per round (warm-up, previous config)", switch],
        [f"open vs closed ({cfg['clients']} clients): p50, p99, requests/s",
         " ".join(f"x{lib.ratio(o[k], b[k])}" for k in ("p50_ms", "p99_ms", "per_second"))],
    ]  # fmt: skip
    # The database breaker's scripts come per worker thread, outcome batches per worker (docs/benchmarks.md.in).
    per_window = 2 * cfg["workers"] * cfg["threads"]
    db = [(r["scripts"] - r["closed"], per_window * math.ceil(r["seconds"] / SYNC_SECONDS) + cfg["workers"] *
           math.ceil(r["seconds"] / FLUSH_SECONDS)) for r in ab]  # fmt: skip
    # Forced open: held until released, so no time to retry is given (client_retry_after).
    refused = all(f[0] == "503" and f[1].startswith(PROBLEM) and not f[2] and f[3] == "open"
                  for _, f, _ in responses(opened)) and not opened["errors"]  # fmt: skip
    stayed = {k: after_b[k] for k in ("state", "forced", "consecutive_failures", "generation")}
    states = f"{forced['detail_state']}, {released['detail_state']}, then {probe_released.header(TALLY[2])}"
    body = json.loads(probe_open.body or b"{}")
    named = body.get("breaker") == BREAKER["name"] and str(body.get("type")).endswith("temporary-reduced-capacity")
    named = named and body.get("status") == 503 and body.get("forced") is True and not probe_open.header("Retry-After")
    checks = [
        lib.check("A: every answer 200, no breaker field", all(closed_ok(r, "", "closed") for r in runs["A"]),
                  [r["statuses"] for r in runs["A"]], "200, none measured with a breaker field"),
        lib.check("B: every answer 200 and closed", all(closed_ok(r, "closed", "") for r in closed),
                  [r["statuses"] for r in closed], "200, every measured one closed"),
        lib.check("switch-over bounded", max(max(v) for v in switch.values()) <= cfg["workers"] * cfg["threads"],
                  switch, f"≤ {cfg['workers'] * cfg['threads']} per round (one per worker thread)"),
        lib.check("O: every answer 503 problem+json, no Retry-After, open", refused, opened["statuses"], "all"),
        lib.check("one admission per guarded response, plus outcome batches and the database breaker's",
                  all(0 <= x <= y for x, y in db), [(r["scripts"], r["closed"]) for r in ab], f"closed + ≤ 1 a "
                  f"worker per {FLUSH_SECONDS:g} s + ≤ 2 a thread per {SYNC_SECONDS:g} s"),
        lib.check("O: refusals from memory", 0 < opened["scripts"] <= opened["sent"] // 100,
                  f"{opened['scripts']} scripts for {opened['sent']}", "> 0, ≤ 1%"),
        lib.check("no failed Redis calls", whole["redis_failed"] == 0, whole["redis_failed"], 0),
        lib.check("B: the breaker stayed closed", stayed == {"state": "closed", "forced": False,
                  "consecutive_failures": 0, "generation": before["generation"]}, stayed, "closed, no failure"),
        lib.check("forced open, then released", states == "forced-open, closed, then closed", states,
                  "forced-open, closed, then closed"),
        lib.check("open answer: 503 problem naming the breaker, forced, no Retry-After", named, body,
                  "…#temporary-reduced-capacity"),
    ]  # fmt: skip
    seen = {"before": before, "after_B": after_b, "forced": forced, "released": released}
    return lib.finish(NAME, machine=machine, config={"path": path, **cfg, "breaker": BREAKER}, columns=lib.COLUMNS,
                      rows=rows, figures=figures, runs=runs, states=seen, checks=checks)  # fmt: skip
