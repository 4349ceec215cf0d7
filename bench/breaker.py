"""What a closed circuit breaker costs, and how fast an open one refuses.

One gunicorn server on the bench database serves GET /api/books/<id> of one small book, and the
load generator (a separate process, keep-alive connections) drives it in two configurations,
alternating A B / B A / A B ... so that drift in the shared machine's load falls on both alike:

A  no circuit-breaker policy at all (the default "search" breaker disabled too)
B  one breaker policy, bench-books, matching the prefix /api/books/, enabled and closed, with a
   consecutive-failure threshold no run can reach and the rate rule off: every request is admitted
   (one Lua round trip) and its outcome recorded (a second one)

Every rate-limit policy is disabled in both, so only the breaker differs. The configuration is
switched by enabling or disabling bench-books in the database between rounds: the save bumps the
policy-version counter in Redis, and each worker re-reads it on its first request after at least
VERSION_CHECK_INTERVAL (1 s) without a check. The bench waits longer than that, idle, before the
next round. While one thread of a worker reloads the policies, its other thread still serves with
the old ones, so a few warm-up responses after a switch may come from the previous config. That
can also happen one round later: the 16 connections are not spread evenly over the workers, and a
worker that got none in a round learns of the switch only in the next. They are counted
("switch-over", at most one per worker thread per round) and none may fall in the measured
window. Toggling keeps the very same warmed processes, pools and connections on both sides;
restarting the server for each round would add its boot (and cold caches) to every switch and
~25 s to the run.

Then the breaker is forced open (services.breaker_force, against the same Redis) and the same
clients measure the 503s it answers, against the closed breaker's latency (phase B).

The generator here also tallies each response's status, Content-Type, Retry-After and
X-Circuit-Breaker-State, so the checks cover every response, not a sample: A never carries the
breaker header, B always says closed, the open phase is always a 503 problem+json with "open" and,
the breaker being forced open (held until released), no Retry-After. Redis calls are counted from
INFO commandstats of a private redis-server that only this run talks to; calls made inside Lua
scripts count there too, so round trips are the script calls
(EVALSHA) plus the commands no script issues. GET and HSET are issued both ways (the per-worker
policy-version check and dashboard heartbeat, about once a second each): while scripts run they
are counted as script-internal, so "other" round trips in B and in the open phase are a lower
bound, short by that once-a-second trickle. Expected: 2 per request in B (admission, outcome); for
refusals, a few admissions per worker until it knows the breaker is open, then none (it refuses from
memory, resilience/hints.py); and in A only that trickle.
Knobs: BENCH_DURATION (s per round and config, default 5), BENCH_WARMUP (1), BENCH_ROUNDS (5),
BENCH_CLIENTS (16), BENCH_WORKERS (4), BENCH_THREADS (2: gthread, so connections are kept alive).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bench import common
from tests.live import RedisServer

NAME = "breaker"
GOAL = 0.90
POLICY: dict[str, Any] = {
    "name": "bench-books",
    "match_type": "prefix",
    "pattern": "/api/books/",
    "failure_statuses": "500-599",
    # Never trips: no run comes near a million failures in a row (and every answer is a 200), and
    # the rate rule is off. The window is the default one, so recording costs what it does in use.
    "failure_threshold": 1_000_000,
    "failure_rate": 0,
    "window_kind": "count",
    "window_size": 20,
    "minimum_calls": 10,
    "open_seconds": 30,
    "half_open_max_calls": 1,
    # A plain 503 when open: the stale fallback would add a Redis write per URL every 2 s.
    "fallback": "error",
}
SCRIPT_COMMANDS = ("evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro")
PROBLEM_JSON = "application/problem+json"
BREAKER_HEADER = "X-Circuit-Breaker-State"


# --- load generator with a response tally (runs as: python -m bench.breaker loadgen) ------------


class _Tap:
    """Pass a StreamReader through, keeping the response head (its first readuntil)."""

    __slots__ = ("reader", "head")

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.head: bytes | None = None

    async def readuntil(self, separator: bytes) -> bytes:
        data = await self.reader.readuntil(separator)
        if self.head is None:
            self.head = data
        return data

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)


def _signature(head: bytes) -> str:
    """Return "status|content-type|retry-after|breaker-state" of a response head ("" when absent)."""
    status_line, _, header_block = head.partition(b"\r\n")
    wanted = {b"content-type": "", b"retry-after": "", BREAKER_HEADER.lower().encode(): ""}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in wanted:
            wanted[name] = value.strip().decode("latin-1")
    return "|".join([status_line.split(b" ", 2)[1].decode(), *wanted.values()])


def _loadgen_main() -> None:
    """Run bench.loadgen unchanged but for counting each response's signature."""
    import asyncio

    from bench import loadgen

    tally: Counter[str] = Counter()
    read_response = loadgen._read_response

    async def tallying_read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
        tap = _Tap(reader)
        result = await read_response(tap)  # type: ignore[arg-type]
        phase = "measured" if time.perf_counter() >= measured_from else "warmup"
        tally[f"{phase}|{_signature(tap.head or b'')}"] += 1
        return result

    loadgen._read_response = tallying_read_response  # type: ignore[assignment]
    spec = json.load(sys.stdin)
    # A hair before the generator's own start: a response on the edge counts as measured (stricter).
    measured_from = time.perf_counter() + spec["warmup"]
    report = asyncio.run(loadgen._run(spec))
    report["responses"] = dict(tally)
    json.dump(report, sys.stdout)


def _run_load(server: common.Server, requests: Sequence[common.Request], **kwargs: Any) -> dict[str, Any]:
    """common.run_load with the generator above: the report also has "responses" ("phase|signature" -> count)."""
    return common.run_load(server, requests, generator=("bench.breaker", "loadgen"), **kwargs)


# --- bench database and policies ----------------------------------------------------------------


def _prepare() -> int:
    """Create the book and the (disabled) breaker policy, disable every other policy; return the book id."""
    from catalog.services import book_create
    from resilience.models import CircuitBreakerPolicy, RateLimitPolicy

    book = book_create(
        isbn="9790000000025", title="Bench small book", price=Decimal("9.99"), stock=5, authors=["Bench"]
    )
    RateLimitPolicy.objects.update(enabled=False)
    CircuitBreakerPolicy.objects.update(enabled=False)  # the default "search" breaker too
    policy = CircuitBreakerPolicy(enabled=False, **POLICY)
    policy.full_clean()
    policy.save()
    return book.pk


def _set_breaker(enabled: bool) -> bool:
    """Enable or disable the bench policy; return True if it changed (then wait for every worker)."""
    from resilience.models import CircuitBreakerPolicy
    from resilience.runtime import VERSION_CHECK_INTERVAL

    policy = CircuitBreakerPolicy.objects.get(name=POLICY["name"])
    if policy.enabled == enabled:
        return False
    policy.enabled = enabled
    policy.save(update_fields=["enabled", "updated_at"])  # post_save bumps the policy version
    common.close_django_connections()
    # Idle for longer than the workers' version-check interval: each one re-reads the version on
    # its next request and reloads the policies before matching it.
    time.sleep(VERSION_CHECK_INTERVAL + 0.25)
    return True


def _breaker_status() -> dict[str, Any]:
    from resilience import services
    from resilience.models import CircuitBreakerPolicy

    (row,) = services.breaker_status(policies=CircuitBreakerPolicy.objects.filter(name=POLICY["name"]))
    common.close_django_connections()
    return {k: row[k] for k in ("state", "detail_state", "forced", "generation", "consecutive_failures", "store")}


def _force(state: Any) -> None:
    from resilience import services

    services.breaker_force(names=[POLICY["name"]], state=state)


# --- measuring ----------------------------------------------------------------------------------


def _lua_commands() -> frozenset[str]:
    """Return the commands the project's Lua scripts call (lower case, as INFO commandstats names them)."""
    pattern = re.compile(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]")
    names: set[str] = set()
    for path in (common.ROOT / "resilience" / "lua").glob("*.lua"):
        names.update(m.lower() for m in pattern.findall(path.read_text(encoding="utf-8")))
    return frozenset(names)


def _commandstats(client: Any) -> dict[str, tuple[int, int]]:
    """Return (calls, failed calls) per command, the INFO call that reads them excluded."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (
            int(value["calls"]),
            int(value.get("failed_calls", 0)) + int(value.get("rejected_calls", 0)),
        )
        for name, value in stats.items()
        if name != "cmdstat_info"
    }


def _probe(server: common.Server, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        return {
            "status": response.status,
            "content_type": response.getheader("Content-Type", ""),
            "retry_after": response.getheader("Retry-After", ""),
            "breaker_state": response.getheader(BREAKER_HEADER, ""),
            "body": document if response.status >= 400 else None,
        }
    finally:
        conn.close()


def _round(
    server: common.Server,
    requests: list[common.Request],
    redis_client: Any,
    lua_commands: frozenset[str],
    *,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    stats_before = _commandstats(redis_client)
    cpu_before = common.server_cpu_seconds(server)
    load = _run_load(server, requests, warmup=warmup, duration=duration, max_requests=int(10_000 * (warmup + duration)))
    cpu = common.server_cpu_seconds(server) - cpu_before
    stats_after = _commandstats(redis_client)
    calls: dict[str, int] = {}
    failed = 0
    for name, (count, fails) in stats_after.items():
        before_count, before_fails = stats_before.get(name, (0, 0))
        if count - before_count:
            calls[name] = count - before_count
        failed += fails - before_fails
    scripts = sum(calls.get(name, 0) for name in SCRIPT_COMMANDS)
    # With no script run in the window nothing can be script-internal: every command was sent.
    internal = lua_commands if scripts else frozenset()
    direct = sum(v for k, v in calls.items() if k not in SCRIPT_COMMANDS and k not in internal)
    completed = max(load["completed"], 1)  # warm-up included: Redis counted those too
    return {
        "per_second": load["measured"]["per_second"],
        "p50_ms": load["measured"]["p50_ms"],
        "p99_ms": load["measured"]["p99_ms"],
        "completed": load["completed"],
        "statuses": load["statuses"],
        "errors": load["errors"],
        "responses": load["responses"],
        "server_cpu_ms_per_request": round(1000 * cpu / completed, 3),
        "script_calls": scripts,
        "failed_redis_calls": failed,
        "redis_round_trips_per_request": round((scripts + direct) / completed, 3),
        "redis_script_calls_per_request": round(scripts / completed, 3),
        "redis_other_round_trips_per_request": round(direct / completed, 3),
        "redis_calls_per_request": round(sum(calls.values()) / completed, 3),
        "redis_calls_by_command": {k: round(v / completed, 3) for k, v in sorted(calls.items())},
    }


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float:
        return round(statistics.fmean(r[key] for r in rounds), 3)

    return {
        "per_second_mean": round(statistics.fmean(r["per_second"] for r in rounds), 1),
        "per_second_rounds": [r["per_second"] for r in rounds],
        "server_cpu_ms_per_request": mean("server_cpu_ms_per_request"),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 2),
        "redis_round_trips_per_request": mean("redis_round_trips_per_request"),
        "redis_script_calls_per_request": mean("redis_script_calls_per_request"),
        "redis_other_round_trips_per_request": mean("redis_other_round_trips_per_request"),
        "redis_calls_per_request": mean("redis_calls_per_request"),
    }


def _responses(r: dict[str, Any], phase: str | None = None) -> list[tuple[list[str], int]]:
    """Return ([status, content type, retry-after, breaker state], count) of a round's responses."""
    out = []
    for key, count in r["responses"].items():
        got_phase, *fields = key.split("|")
        if phase is None or got_phase == phase:
            out.append((fields, count))
    return out


def _is(fields: list[str], status: str, *, problem: bool, retry_after: bool, state: str) -> bool:
    got_status, content_type, got_retry_after, got_state = fields
    return (
        got_status == status
        and (content_type.split(";")[0].strip() == PROBLEM_JSON) == problem
        and bool(got_retry_after) == retry_after
        and got_state == state
    )


def _with_state(r: dict[str, Any], state: str, phase: str | None = None) -> int:
    return sum(count for fields, count in _responses(r, phase) if fields[3] == state)


def _closed_round_ok(r: dict[str, Any], state: str, previous: str) -> bool:
    """Every response a 200 with the config's breaker header; in the warm-up the other config's
    header is allowed too (counted as switch-over and bounded separately)."""
    if r["errors"] or not r["responses"]:
        return False
    for phase, allowed in (("measured", [state]), ("warmup", [state, previous])):
        for fields, _ in _responses(r, phase):
            if not any(_is(fields, "200", problem=False, retry_after=False, state=s) for s in allowed):
                return False
    return True


def _report(results: dict[str, Any]) -> str:
    m, cfg = results["machine"], results["config"]
    a, b, o = results["A"], results["B"], results["open"]
    lines = [
        f"breaker: GET /api/books/<id>, {cfg['clients']} keep-alive clients, {cfg['rounds']} rounds x "
        f"({cfg['warmup_s']:g} s warm-up + {cfg['duration_s']:g} s) per config, alternating; then the "
        "breaker forced open",
        f"machine: nproc {m['nproc']}, Python {m['python']}, PostgreSQL {m['postgresql']}, gunicorn {m['gunicorn']}",
        f"server: gunicorn -w {cfg['workers']} --worker-class {cfg['worker_class']} --threads {cfg['threads']}, one "
        "server; configs switched by enabling/disabling the policy (version bump, idle > 1 s)",
        "",
        f"{'':34} {'per s':>8} {'rounds':>24} {'CPU ms/req':>11} {'p50 ms':>7} {'p99 ms':>7} {'Redis RT/req':>13}",
    ]
    rows = (
        ("A  no breaker policy", a, a["per_second_rounds"]),
        ("B  breaker closed (bench-books)", b, b["per_second_rounds"]),
        ("O  breaker forced open (503)", o, [o["per_second"]]),
    )
    for label, s, per_round in rows:
        rounds = " ".join(f"{x:.0f}" for x in per_round)
        per_second = s.get("per_second_mean", s.get("per_second"))
        lines.append(
            f"{label:34} {per_second:>8.1f} {rounds:>24} {s['server_cpu_ms_per_request']:>11.3f} "
            f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['redis_round_trips_per_request']:>13.3f}"
        )
    lat = results["open_vs_closed"]
    lines += [
        "",
        f"B / A requests per second: {results['ratio']:.3f} (goal >= {GOAL:.2f}: "
        f"{'met' if results['goal_met'] else 'NOT met'}); per round: "
        + " ".join(f"{x:.3f}" for x in results["ratio_rounds"]),
        f"A / B server CPU per request: {results['cpu_ratio']:.3f} "
        f"(B costs {b['server_cpu_ms_per_request'] - a['server_cpu_ms_per_request']:+.3f} ms CPU per request)",
        f"Redis round trips per request: B {b['redis_round_trips_per_request']:.3f} "
        f"(EVALSHA {b['redis_script_calls_per_request']:.3f}: admission + outcome record; other "
        f"{b['redis_other_round_trips_per_request']:.3f}), open {o['redis_round_trips_per_request']:.3f} "
        f"(EVALSHA {o['redis_script_calls_per_request']:.3f}: until each worker knows it is open), "
        f"A {a['redis_round_trips_per_request']:.3f} (version checks, heartbeats)",
        "switch-over (warm-up responses under the previous config, none measured): A "
        + " ".join(str(r["switch_over_responses"]) for r in results["A_rounds"])
        + ", B "
        + " ".join(str(r["switch_over_responses"]) for r in results["B_rounds"]),
        "  B by command, script-internal calls included: "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["B_rounds"][-1]["redis_calls_by_command"].items()),
        f"open vs closed, {cfg['clients']} clients: p50 {o['p50_ms']:.2f} vs {b['p50_ms']:.2f} ms "
        f"(x{lat['p50_ratio']:.3f}), p99 {o['p99_ms']:.2f} vs {b['p99_ms']:.2f} ms (x{lat['p99_ratio']:.3f}), "
        f"{o['per_second']:.0f} vs {b['per_second_mean']:.0f} per s (x{lat['per_second_ratio']:.2f})",
        f"checks: {'OK' if results['ok'] else 'FAILED'} " + "; ".join(f"{k}={v}" for k, v in results["checks"].items()),
    ]
    load = os.getloadavg()[0]
    if m["loadavg_1m_at_start"] > m["nproc"] / 2 or load > m["nproc"] / 2:
        lines.append(
            f"note: load average {m['loadavg_1m_at_start']} at start, {load:.2f} at the end, on {m['nproc']} "
            "CPUs: other work shares the machine, so absolute figures are noisy; CPU per request less so"
        )
    return "\n".join(lines)


def _ratio(x: float, y: float) -> float:
    return round(x / y, 4) if y else 0.0


def main() -> int:
    warmup = common.env_number("BENCH_WARMUP", 1.0)
    duration = common.env_number("BENCH_DURATION", 5.0)
    rounds = int(common.env_number("BENCH_ROUNDS", 5))
    clients = int(common.env_number("BENCH_CLIENTS", 16))
    workers = int(common.env_number("BENCH_WORKERS", 4))
    threads = int(common.env_number("BENCH_THREADS", 2))
    measure = {"warmup": warmup, "duration": duration}

    with RedisServer() as redis_server:
        # Django in this process uses the private Redis too: the version bumps and the forced
        # state land where the workers look.
        common.setup_django(REDIS_URL=redis_server.url)
        # This process applies the forced transitions; the bench output is no place for their log lines.
        logging.getLogger("resilience").setLevel(logging.ERROR)
        from resilience.breaker import State

        book_id = _prepare()
        machine = {**common.machine(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
        common.close_django_connections()
        path = f"/api/books/{book_id}"
        requests = [common.Request("GET", path, {"Accept": "application/json"}) for _ in range(clients)]
        env = common.bench_env(DB_POOL_MIN=str(threads), DB_POOL_MAX=str(threads), REDIS_URL=redis_server.url)
        redis_client = redis_server.client()
        lua_commands = _lua_commands()
        results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        probes: dict[str, dict[str, Any]] = {}
        log = common.RESULTS_DIR / f"{NAME}.gunicorn.log"
        with common.gunicorn(workers=workers, threads=threads, env=env, log=log, probe_path=path) as server:
            # Probe each config once before measuring; B's probe also loads both Lua scripts into
            # Redis, so no round carries the one-off NOSCRIPT retry.
            _set_breaker(True)
            probes["B"] = _probe(server, path)
            status_before = _breaker_status()
            _set_breaker(False)
            probes["A"] = _probe(server, path)
            for n in range(rounds):
                order = ["A", "B"] if n % 2 == 0 else ["B", "A"]
                for label in order:
                    switched = _set_breaker(label == "B")
                    results[label].append(_round(server, requests, redis_client, lua_commands, **measure))
                    results[label][-1]["after_switch"] = switched
            _set_breaker(True)
            status_closed = _breaker_status()
            _force(State.FORCED_OPEN)
            status_open = _breaker_status()
            probes["open"] = _probe(server, path)
            open_round = _round(server, requests, redis_client, lua_commands, **measure)
            _force(None)
            status_released = _breaker_status()
            probes["released"] = _probe(server, path)
        redis_client.close()

    a_sum, b_sum = _summary(results["A"]), _summary(results["B"])
    open_body = probes["open"]["body"] or {}
    for r in results["A"]:
        r["switch_over_responses"] = _with_state(r, "closed", "warmup")
    for r in results["B"]:
        r["switch_over_responses"] = _with_state(r, "", "warmup")
    closed_rounds = [*results["A"], *results["B"]]
    checks = {
        "A_all_200_no_breaker_header": all(_closed_round_ok(r, "", "closed") for r in results["A"]),
        "B_all_200_closed_header": all(_closed_round_ok(r, "closed", "") for r in results["B"]),
        "switch_over_within_warmup_and_bounded": all(
            r["switch_over_responses"] <= workers * threads for r in closed_rounds
        ),
        # Forced open: held until released, so no time to retry is given (resilience.breakers.client_retry_after).
        "open_all_503_problem_no_retry_after_open": not open_round["errors"]
        and bool(open_round["responses"])
        and all(
            _is(fields, "503", problem=True, retry_after=False, state="open") for fields, _ in _responses(open_round)
        ),
        # Redis agrees with the headers: two script calls per guarded response, none for the others.
        "two_round_trips_per_guarded_request": all(
            r["script_calls"] == 2 * _with_state(r, "closed") for r in closed_rounds
        ),
        # Each worker asks Redis until it has learnt the breaker is open (resilience/hints.py), then
        # refuses from memory: a handful of admissions per worker, under 1% of the refusals.
        "refusals_from_memory": 0 < open_round["script_calls"] <= open_round["completed"] // 100,
        "no_failed_redis_calls": all(r["failed_redis_calls"] == 0 for r in [*results["A"], *results["B"], open_round]),
        "breaker_stayed_closed": status_closed["state"] == "closed"
        and not status_closed["forced"]
        and status_closed["consecutive_failures"] == 0
        and status_closed["generation"] == status_before["generation"],
        "forced_open_then_released": status_open["detail_state"] == State.FORCED_OPEN
        and status_released["detail_state"] == State.CLOSED
        and probes["released"]["breaker_state"] == "closed",
        "open_body_problem": open_body.get("status") == 503
        and open_body.get("breaker") == POLICY["name"]
        and str(open_body.get("type", "")).endswith("temporary-reduced-capacity")
        and open_body.get("forced") is True
        and probes["open"]["retry_after"] == "",
    }
    ratio = _ratio(b_sum["per_second_mean"], a_sum["per_second_mean"])
    open_summary = {k: v for k, v in open_round.items() if k not in ("responses", "redis_calls_by_command")}
    results_doc = {
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
            "policy": POLICY,
            "switch": "policy enabled/disabled between rounds, idle > VERSION_CHECK_INTERVAL before the next",
        },
        "A": a_sum,
        "B": b_sum,
        "open": open_summary,
        "ratio": ratio,
        "ratio_rounds": [
            _ratio(rb["per_second"], ra["per_second"]) for ra, rb in zip(results["A"], results["B"], strict=True)
        ],
        "cpu_ratio": _ratio(a_sum["server_cpu_ms_per_request"], b_sum["server_cpu_ms_per_request"]),
        "goal": GOAL,
        "goal_met": ratio >= GOAL,
        "open_vs_closed": {
            "p50_ratio": _ratio(open_round["p50_ms"], b_sum["p50_ms"]),
            "p99_ratio": _ratio(open_round["p99_ms"], b_sum["p99_ms"]),
            "per_second_ratio": _ratio(open_round["per_second"], b_sum["per_second_mean"]),
        },
        "A_rounds": results["A"],
        "B_rounds": results["B"],
        "open_round": open_round,
        "breaker_status": {
            "before": status_before,
            "after_B": status_closed,
            "forced": status_open,
            "released": status_released,
        },
        "probes": probes,
        "checks": checks,
        "ok": all(checks.values()),
    }
    print(_report(results_doc))
    path_written = common.write_results(NAME, results_doc)
    print(f"results: {path_written.relative_to(common.ROOT)}")
    return 0 if results_doc["ok"] else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["loadgen"]:
        _loadgen_main()
    else:
        sys.exit(main())
