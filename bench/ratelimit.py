"""What the rate limiter costs: requests per second of a cheap endpoint without and with it.

Two gunicorn servers run side by side on the bench database, and the load generator (a separate
process, keep-alive connections) drives them in turn, alternating A B / B A / A B ... so that
drift in the shared machine's load falls on both alike:

A  the resilience middleware removed (RESILIENCE_MIDDLEWARE=false)
B  the middleware on, with three policies matching every request and never limiting it: per-IP
   sliding window, global token bucket, per-X-App-Id fixed window (one Lua round trip decides all)

Both serve GET /api/books/<id> of one small book. The report gives requests per second of each
round, the ratio B / A (goal: at least 0.90), server CPU per request, and Redis commands per
request in B, counted from INFO commandstats of a private redis-server that only B talks to
(calls made inside the Lua script count too, so the round trips are the EVALSHA line).
Knobs: BENCH_DURATION (s per round and config, default 5), BENCH_WARMUP (1), BENCH_ROUNDS (5),
BENCH_CLIENTS (16), BENCH_WORKERS (4), BENCH_THREADS (2: gthread, so connections are kept alive).
"""

from __future__ import annotations

import http.client
import os
import statistics
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bench import common
from tests.live import RedisServer

NAME = "ratelimit"
GOAL = 0.90
APP_IDS = 8  # distinct X-App-Id values among the clients
POLICIES = [
    # Limits far above what two cores can serve, so every request is decided and none refused.
    # 100,000 per minute per IP: the sliding log's ceiling (SLIDING_LOG_MAX), ~1,600 per second.
    {"name": "bench-ip", "key": "ip", "algorithm": "sliding_window", "limit": 100_000, "period": 60},
    # 1,000,000 per second for everyone together, bursts of as many.
    {"name": "bench-global", "key": "global", "algorithm": "token_bucket", "limit": 1_000_000, "period": 1},
    # 1,000,000 per minute per app id.
    {
        "name": "bench-app",
        "key": "header",
        "header_name": "X-App-Id",
        "algorithm": "fixed_window",
        "limit": 1_000_000,
        "period": 60,
    },
]


def _prepare() -> int:
    """Create the book and the three policies; return the book id."""
    from catalog.services import book_create
    from resilience.models import RateLimitPolicy

    book = book_create(
        isbn="9790000000018", title="Bench small book", price=Decimal("9.99"), stock=5, authors=["Bench"]
    )
    # Only the bench's own policies: the defaults (a global /api/ ceiling among them) would add
    # a fourth spec to every decision.
    RateLimitPolicy.objects.all().delete()
    for fields in POLICIES:
        policy = RateLimitPolicy(match_type="prefix", pattern="/api/books/", **fields)
        policy.full_clean()
        policy.save()
    return book.pk


def _probe(server: common.Server, path: str) -> dict[str, str]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-App-Id": "bench-probe"})
        response = conn.getresponse()
        response.read()
        return {"status": str(response.status), "ratelimit_policy": response.getheader("RateLimit-Policy", "")}
    finally:
        conn.close()


def _round(
    server: common.Server, requests: list[common.Request], redis_client: Any, *, warmup: float, duration: float
) -> dict[str, Any]:
    stats_before = common.redis_command_calls(redis_client)
    cpu_before = common.server_cpu_seconds(server)
    load = common.run_load(
        server, requests, warmup=warmup, duration=duration, max_requests=int(10_000 * (warmup + duration))
    )
    cpu = common.server_cpu_seconds(server) - cpu_before
    stats_after = common.redis_command_calls(redis_client)
    calls = {k: v - stats_before.get(k, 0) for k, v in stats_after.items() if v - stats_before.get(k, 0)}
    completed = max(load["completed"], 1)  # warm-up included: Redis counted those too
    return {
        "per_second": load["measured"]["per_second"],
        "p50_ms": load["measured"]["p50_ms"],
        "p99_ms": load["measured"]["p99_ms"],
        "completed": load["completed"],
        "statuses": load["statuses"],
        "errors": load["errors"],
        "server_cpu_ms_per_request": round(1000 * cpu / completed, 3),
        "redis_calls_per_request": round(sum(calls.values()) / completed, 3),
        "redis_round_trips_per_request": round(common.script_calls(calls) / completed, 3),
        "redis_calls_by_command": {k: round(v / completed, 3) for k, v in sorted(calls.items())},
    }


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "per_second_mean": round(statistics.fmean(r["per_second"] for r in rounds), 1),
        "per_second_rounds": [r["per_second"] for r in rounds],
        "server_cpu_ms_per_request": round(statistics.fmean(r["server_cpu_ms_per_request"] for r in rounds), 3),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 2),
        "redis_calls_per_request": round(statistics.fmean(r["redis_calls_per_request"] for r in rounds), 3),
        "redis_round_trips_per_request": round(statistics.fmean(r["redis_round_trips_per_request"] for r in rounds), 3),
    }


def _report(results: dict[str, Any]) -> str:
    m, cfg, a, b = results["machine"], results["config"], results["A"], results["B"]
    lines = [
        f"ratelimit: GET /api/books/<id>, {cfg['clients']} keep-alive clients, {cfg['rounds']} rounds x "
        f"({cfg['warmup_s']:g} s warm-up + {cfg['duration_s']:g} s) per config, alternating",
        f"machine: nproc {m['nproc']}, Python {m['python']}, PostgreSQL {m['postgresql']}, gunicorn {m['gunicorn']}",
        f"server: gunicorn -w {cfg['workers']} --worker-class {cfg['worker_class']} --threads {cfg['threads']}",
        "",
        f"{'':34} {'per s':>9} {'rounds':>24} {'CPU ms/req':>11} {'p50 ms':>7} {'p99 ms':>7}",
    ]
    for label, s in (("A  no resilience middleware", a), ("B  middleware + 3 policies", b)):
        rounds = " ".join(f"{x:.0f}" for x in s["per_second_rounds"])
        lines.append(
            f"{label:34} {s['per_second_mean']:>9.1f} {rounds:>24} {s['server_cpu_ms_per_request']:>11.3f} "
            f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f}"
        )
    lines += [
        "",
        f"B / A requests per second: {results['ratio']:.3f} (goal >= {GOAL:.2f}: "
        f"{'met' if results['goal_met'] else 'NOT met'}); per round: "
        + " ".join(f"{x:.3f}" for x in results["ratio_rounds"]),
        f"A / B server CPU per request: {results['cpu_ratio']:.3f}",
        f"Redis in B: {b['redis_round_trips_per_request']:.3f} round trips (EVALSHA) and "
        f"{b['redis_calls_per_request']:.3f} commands per request, script-internal calls included "
        f"(A: {a['redis_calls_per_request']:.3f})",
        "  by command: "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["B_rounds"][-1]["redis_calls_by_command"].items()),
        f"checks: {'OK' if results['ok'] else 'FAILED'} " + "; ".join(f"{k}={v}" for k, v in results["checks"].items()),
    ]
    load = os.getloadavg()[0]
    if m["loadavg_1m_at_start"] > m["nproc"] / 2 or load > m["nproc"] / 2:
        lines.append(
            f"note: load average {m['loadavg_1m_at_start']} at start, {load:.2f} at the end, on {m['nproc']} "
            "CPUs: other work shares the machine, so absolute figures are noisy; CPU per request less so"
        )
    return "\n".join(lines)


def main() -> int:
    warmup = common.env_number("BENCH_WARMUP", 1.0)
    duration = common.env_number("BENCH_DURATION", 5.0)
    rounds = int(common.env_number("BENCH_ROUNDS", 5))
    clients = int(common.env_number("BENCH_CLIENTS", 16))
    workers = int(common.env_number("BENCH_WORKERS", 4))
    threads = int(common.env_number("BENCH_THREADS", 2))

    with RedisServer() as redis_server:
        # Django in this process uses the private Redis too, so the policies' version bump lands there.
        common.setup_django(REDIS_URL=redis_server.url)
        book_id = _prepare()
        machine = {**common.machine(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
        common.close_django_connections()
        path = f"/api/books/{book_id}"
        requests = [
            common.Request("GET", path, {"X-App-Id": f"bench-app-{n % APP_IDS}", "Accept": "application/json"})
            for n in range(clients)
        ]
        env = {"DB_POOL_MIN": str(threads), "DB_POOL_MAX": str(threads), "REDIS_URL": redis_server.url}
        env_a = common.bench_env(**env, RESILIENCE_MIDDLEWARE="false")
        env_b = common.bench_env(**env)
        redis_client = redis_server.client()
        results_a: list[dict[str, Any]] = []
        results_b: list[dict[str, Any]] = []
        log_a = common.RESULTS_DIR / f"{NAME}.A.gunicorn.log"
        log_b = common.RESULTS_DIR / f"{NAME}.B.gunicorn.log"
        with (
            common.gunicorn(workers=workers, threads=threads, env=env_a, log=log_a, probe_path=path) as a,
            common.gunicorn(workers=workers, threads=threads, env=env_b, log=log_b, probe_path=path) as b,
        ):
            probes = {"A": _probe(a, path), "B": _probe(b, path)}
            for n in range(rounds):
                order = [("A", a, results_a), ("B", b, results_b)]
                for _label, server, sink in order if n % 2 == 0 else reversed(order):
                    sink.append(_round(server, requests, redis_client, warmup=warmup, duration=duration))
        redis_client.close()

    a_sum, b_sum = _summary(results_a), _summary(results_b)
    names = sorted(p["name"] for p in POLICIES)
    shown = sorted(item.split(";")[0].strip().strip('"') for item in probes["B"]["ratelimit_policy"].split(","))
    checks = {
        "A_all_200": all(set(r["statuses"]) == {"200"} and not r["errors"] for r in results_a),
        "B_all_200": all(set(r["statuses"]) == {"200"} and not r["errors"] for r in results_b),
        "A_no_ratelimit_headers": probes["A"] == {"status": "200", "ratelimit_policy": ""},
        "B_three_policies_matched": probes["B"]["status"] == "200" and shown == names,
    }
    ratio = b_sum["per_second_mean"] / a_sum["per_second_mean"] if a_sum["per_second_mean"] else 0.0
    results = {
        "benchmark": NAME,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": {
            "endpoint": "GET /api/books/<id>",
            "clients": clients,
            "rounds": rounds,
            "warmup_s": warmup,
            "duration_s": duration,
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread" if threads > 1 else "sync",
            "policies": POLICIES,
        },
        "A": a_sum,
        "B": b_sum,
        "ratio": round(ratio, 4),
        "ratio_rounds": [
            round(rb["per_second"] / ra["per_second"], 4) if ra["per_second"] else 0.0
            for ra, rb in zip(results_a, results_b, strict=True)
        ],
        "cpu_ratio": round(a_sum["server_cpu_ms_per_request"] / b_sum["server_cpu_ms_per_request"], 4)
        if b_sum["server_cpu_ms_per_request"]
        else 0.0,
        "goal": GOAL,
        "goal_met": ratio >= GOAL,
        "A_rounds": results_a,
        "B_rounds": results_b,
        "probes": probes,
        "checks": checks,
        "ok": all(checks.values()),
    }
    print(_report(results))
    path_written = common.write_results(NAME, results)
    print(f"results: {path_written.relative_to(common.ROOT)}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
