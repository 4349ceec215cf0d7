"""hotpath: what the resilience layer adds to a trivial request (docs/benchmarks.md.in)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from bench import lib
from tests.live import request

NAME = "hotpath"
PATH = "/api/bench/ping"
CONFIGS = {
    "a": ("a: product middleware, no resilience layer", {"RESILIENCE_MIDDLEWARE": "false"}),
    "b": ("b: + 3 rate limits, a closed breaker and a bulkhead", {}),
    "c": ("c: minimal Django stack", {"BENCH_MINIMAL_STACK": "true"}),
}
LIMITS: list[dict[str, Any]] = [
    {"name": "bench-ip", "key": "ip", "algorithm": "sliding_window", "limit": 100_000, "period": 60},
    {"name": "bench-global", "key": "global", "algorithm": "token_bucket", "limit": 1_000_000, "period": 1},
    {"name": "bench-app", "key": "header", "header_name": "X-App-Id", "algorithm": "fixed_window",
     "limit": 1_000_000, "period": 60},
]  # fmt: skip
# Each policy decides every request and never refuses, trips or fills up (docs/benchmarks.md.in).
BREAKER: dict[str, Any] = {"name": "bench-breaker", "failure_threshold": 10_000}
BULKHEAD: dict[str, Any] = {"name": "bench-bulkhead", "key": "global", "max_in_flight": 10_000}
DECISIONS = "bookstore_concurrency_decisions_total"  # the bulkhead's, from /metrics
ADMITTED = f'{DECISIONS}{{outcome="admitted",policy="{BULKHEAD["name"]}"}}'


def prepare(path: str, limits: list[dict[str, Any]], breaker: dict[str, Any], bulkhead: Any = None) -> None:
    """Disable every policy but the database breaker (which guards connections, not paths), then create these."""
    from resilience.models import CircuitBreakerPolicy, ConcurrencyPolicy, RateLimitPolicy

    RateLimitPolicy.objects.update(enabled=False)
    ConcurrencyPolicy.objects.update(enabled=False)
    CircuitBreakerPolicy.objects.exclude(name="database").update(enabled=False)  # the "search" breaker too
    policies = [*(RateLimitPolicy(**fields) for fields in limits), CircuitBreakerPolicy(**breaker)]
    policies += [ConcurrencyPolicy(**bulkhead)] if bulkhead else []
    for policy in policies:
        policy.match_type, policy.pattern = "prefix", path
        policy.full_clean()
        policy.save()


def main() -> int:
    cfg = lib.knobs(duration=5.0, warmup=1.0, rounds=5, clients=16, workers=4, threads=2)
    mix = [("GET", PATH, {"X-App-Id": f"bench-app-{n}"}, "") for n in range(8)]  # 8 apps
    with lib.prepared(NAME) as (_, redis), ExitStack() as stack:
        prepare(PATH, LIMITS, BREAKER, BULKHEAD)
        machine = lib.machine(redis)
        size = {"workers": cfg["workers"], "threads": cfg["threads"]}
        servers = {k: stack.enter_context(lib.server(**size, **env)) for k, (_, env) in CONFIGS.items()}
        probes = {k: request(s.port, PATH, headers={"X-App-Id": "probe"}) for k, s in servers.items()}
        done = [(k, lib.wrk_round(servers[k], redis, mix, cfg)) for k in lib.alternate(list(CONFIGS), cfg["rounds"])]
        runs = {k: [r for label, r in done if label == k] for k in CONFIGS}
        slots = {k: lib.metrics(s.port, DECISIONS) for k, s in servers.items()}

    (a, b, c), rows = lib.summarise({k: v[0] for k, v in CONFIGS.items()}, runs)
    policies = {k: (p.header("RateLimit-Policy") or "").split(",") for k, p in probes.items()}
    shown = {k: sorted(x.split(";")[0].strip(' "') for x in xs if x) for k, xs in policies.items()}  # policy names
    state = {k: p.header("X-Circuit-Breaker-State") for k, p in probes.items()}
    bad = {k: sum(r["bad_status"] + r["socket_errors"] for r in rs) for k, rs in runs.items()}
    measured = sum(r["requests"] for r in runs["b"])
    figures = [
        ["b over a: added server CPU per request", f"{b['cpu_ms'] - a['cpu_ms']:+.3f} ms"],
        ["b over a: added wall time per request (1 / throughput)",
         f"{1000 / b['per_second'] - 1000 / a['per_second']:+.3f} ms"],
        ["requests/s b / a (goal ≥ 0.90)", lib.ratios(runs["b"], runs["a"])],
        ["requests/s a / c", lib.ratio(a["per_second"], c["per_second"])],
        ["server CPU per request b / a", lib.ratio(b["cpu_ms"], a["cpu_ms"])],
        ["Redis round trips per request in b (admission with the slot, slot release; breaker outcomes batched)",
         b["redis_rt"]],
        ["Redis calls per request in b, by command", lib.listing(runs["b"][-1]["by_command"])],
    ]  # fmt: skip
    checks = [
        lib.check("every answer 200, no socket errors", not any(bad.values()) and
                  all(p.status == 200 for p in probes.values()), bad, "0 each"),
        lib.check("a and c: no policy matched", not (shown["a"] or shown["c"] or state["a"] or state["c"]),
                  f"a {shown['a']} {state['a']}, c {shown['c']} {state['c']}", "none"),
        lib.check("b: the three limits and the closed breaker matched", shown["b"] == sorted(x["name"] for x in LIMITS)
                  and state["b"] == "closed", f"{shown['b']}, breaker {state['b']}", "3 limits, closed"),
        lib.check("b: every request took a bulkhead slot; a and c none", [*slots["b"]] == [ADMITTED] and
                  slots["b"][ADMITTED] >= measured and not slots["a"] and not slots["c"],
                  f"b {lib.listing({k.removeprefix(DECISIONS): v for k, v in slots['b'].items()})} for {measured} "
                  f"measured; a {len(slots['a'])}, c {len(slots['c'])} series", "all admitted; none"),
    ]  # fmt: skip
    config = {"path": PATH, **cfg, "limits": LIMITS, "breaker": BREAKER, "bulkhead": BULKHEAD}
    return lib.finish(NAME, machine=machine, config=config, columns=lib.COLUMNS, rows=rows, figures=figures,
                      checks=checks, runs=runs)  # fmt: skip
