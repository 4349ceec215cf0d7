"""What a PostgreSQL outage costs the API, and how soon the API serves again once it is back.

gunicorn (BENCH_WORKERS sync workers, the deployment's default worker class) reaches PostgreSQL on
the bench database through a TcpProxy (tests/live.py), never directly, so the shared server is not
touched. A separate load-generator process (this module with --load) runs for the whole timeline:

    BENCH_WARMUP s (3) normal  ->  proxy.refuse() for BENCH_OUTAGE s (10)  ->  proxy.restore()  ->  BENCH_AFTER s (5)

refuse() cuts every open connection and refuses new ones, as when PostgreSQL's process dies.
BENCH_CLIENTS (4) clients loop GET /api/books/<id> (a fresh connection each: sync workers close
after every response); one prober GETs /health/live every 50 ms, another /health/breakers and
/metrics every 250 ms. Every request is recorded (start, duration, status, and for a 503 whether it
is problem+json with Retry-After and whether the database breaker refused it).

Printed and written to bench/results/pg_outage.json:
- API p50/p99 during the outage, and over the requests sent once the breaker is open (after the
  first answer that says the database breaker refused it);
- /health/live p50/p99/max during the outage;
- 5xx by status and by endpoint;
- the time from restore() to the first successful API answer.

Checks (the exit status is non-zero if one fails): no API answer other than 200 or 503, every 503 a
problem+json with Retry-After, p99 under 50 ms once the breaker is open, /health/live under 50 ms
(p99) throughout the outage, /metrics and /health/breakers always 200, the first success within
1.5 s of the database's return.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from bench import common
from tests.live import RedisServer, TcpProxy

NAME = "pg_outage"
PROBLEM_JSON = "application/problem+json"
OPEN_P99_GOAL_MS = 50.0
LIVE_P99_GOAL_MS = 50.0
RECOVERY_GOAL_S = 1.5


# --- the load generator (a separate process) -------------------------------------------------------


async def _get(host: str, port: int, path: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Send one GET on a fresh connection; return status, lower-cased headers and body."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, _, block = head.decode("latin-1").partition("\r\n")
            headers = {}
            for line in block.split("\r\n"):
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            return int(status_line.split(" ", 2)[1]), headers, body
        finally:
            writer.close()


async def _loop(kind: str, paths: list[str], spec: dict[str, Any], every: float, records: list[list[Any]]) -> None:
    """Request each path in turn until the end of the timeline, at most once per ``every`` seconds."""
    n = 0
    while (began := time.monotonic()) < spec["until"] and len(records) < spec["max_records"]:
        path = paths[n % len(paths)]
        n += 1
        try:
            status, headers, body = await _get(spec["host"], spec["port"], path, spec["timeout"])
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            records.append([kind, path, began, time.monotonic() - began, 0, type(e).__name__, "", False])
            await asyncio.sleep(0.05)  # a refused connect must not spin
            continue
        refused_by = ""
        if headers.get("content-type", "") == PROBLEM_JSON:
            try:
                refused_by = str(json.loads(body).get("breaker", ""))
            except ValueError:
                refused_by = "?"
        problem = headers.get("content-type", "") == PROBLEM_JSON
        retry_after = headers.get("retry-after", "")
        records.append([kind, path, began, time.monotonic() - began, status, retry_after, refused_by, problem])
        await asyncio.sleep(max(0.0, began + every - time.monotonic()))


async def _generate(spec: dict[str, Any]) -> list[list[Any]]:
    records: list[list[Any]] = []
    loops = [_loop("api", [spec["api_path"]], spec, 0.0, records) for _ in range(spec["clients"])]
    loops.append(_loop("live", ["/health/live"], spec, 0.05, records))
    loops.append(_loop("ops", ["/health/breakers", "/metrics"], spec, 0.25, records))
    await asyncio.gather(*loops)
    return records


def load_main() -> None:
    """Run the load described by the JSON spec on stdin; write every request's record to stdout."""
    spec = json.load(sys.stdin)
    json.dump(asyncio.run(_generate(spec)), sys.stdout)


# --- the bench --------------------------------------------------------------------------------------


def _prepare() -> int:
    """Create one book; return its id."""
    from decimal import Decimal

    from catalog.services import book_create

    book = book_create(
        isbn="9780000000002", title="The Outage", price=Decimal("10.00"), stock=100, authors=["A. Author"]
    )
    return book.pk


def _ms(values: list[float], q: float) -> float:
    return round(common.percentile(sorted(values), q) * 1000, 2)


def _summary(rows: list[list[Any]]) -> dict[str, Any]:
    seconds = [r[3] for r in rows]
    return {
        "count": len(rows),
        "p50_ms": _ms(seconds, 50),
        "p99_ms": _ms(seconds, 99),
        "max_ms": round(max(seconds, default=0.0) * 1000, 2),
    }


def analyse(records: list[list[Any]], t_start: float, t_out: float, t_back: float, t_end: float) -> dict[str, Any]:
    """Return the figures of one run from the generator's records and the proxy's timeline."""
    api = [r for r in records if r[0] == "api"]
    before = [r for r in api if r[2] < t_out]
    during = [r for r in api if t_out <= r[2] < t_back]
    refusals = [r for r in during if r[4] == 503 and r[6] == "database"]
    # "Known down": requests sent after the first answer that says the database breaker refused.
    known_at = min((r[2] + r[3] for r in refusals), default=None)
    known = [r for r in during if known_at is not None and r[2] >= known_at]
    first_ok = min((r[2] + r[3] for r in api if r[2] >= t_back and r[4] == 200), default=None)
    live = [r for r in records if r[0] == "live" and t_out <= r[2] < t_back]
    ops = [r for r in records if r[0] == "ops"]
    fives: Counter[str] = Counter()
    for r in records:
        if r[4] >= 500 or r[4] == 0:
            fives[f"{r[1]} {r[4] or r[5]}"] += 1
    return {
        "outage_seconds": round(t_back - t_out, 2),
        "api_before": {**_summary(before), "per_second": round(len(before) / (t_out - t_start), 1)},
        "api_during_outage": {**_summary(during), "per_second": round(len(during) / (t_back - t_out), 1)},
        "api_once_known_down": {
            **_summary(known),
            "known_down_after_s": round(known_at - t_out, 3) if known_at is not None else None,
        },
        "api_statuses_during_outage": dict(Counter(str(r[4]) for r in during)),
        "api_503_without_problem_or_retry_after": sum(1 for r in during if r[4] == 503 and not (r[7] and r[5])),
        "api_other_statuses": sum(1 for r in api if r[4] not in (200, 503)),
        "retry_after_values": dict(Counter(r[5] for r in during if r[4] == 503)),
        "live_during_outage": _summary(live),
        "live_non_200": sum(1 for r in records if r[0] == "live" and r[4] != 200),
        "ops_statuses": dict(Counter(f"{r[1]} {r[4]}" for r in ops)),
        "ops_during_outage": _summary([r for r in ops if t_out <= r[2] < t_back]),
        "server_errors": dict(sorted(fives.items())),
        "first_success_after_return_s": round(first_ok - t_back, 3) if first_ok is not None else None,
        "api_after_return": _summary([r for r in api if r[2] >= t_back]),
        "timeline_seconds": round(t_end - t_out, 2),
    }


def checks(figures: dict[str, Any]) -> dict[str, bool]:
    """Return each correctness claim of the outage, by name."""
    known = figures["api_once_known_down"]
    ops_ok = all(key.endswith(" 200") for key in figures["ops_statuses"])
    recovery = figures["first_success_after_return_s"]
    return {
        "api_answers_only_200_or_503": figures["api_other_statuses"] == 0,
        "every_503_is_problem_json_with_retry_after": figures["api_503_without_problem_or_retry_after"] == 0,
        "breaker_refuses_during_outage": known["known_down_after_s"] is not None and known["count"] > 0,
        "p99_once_known_down_under_50ms": known["count"] > 0 and known["p99_ms"] < OPEN_P99_GOAL_MS,
        "live_p99_under_50ms_throughout": figures["live_during_outage"]["p99_ms"] < LIVE_P99_GOAL_MS
        and figures["live_non_200"] == 0,
        "metrics_and_breakers_always_200": ops_ok,
        "first_success_within_1_5s_of_return": recovery is not None and recovery < RECOVERY_GOAL_S,
    }


def main() -> int:
    warmup = common.env_number("BENCH_WARMUP", 3.0)
    outage = common.env_number("BENCH_OUTAGE", 10.0)
    after = common.env_number("BENCH_AFTER", 5.0)
    clients = int(common.env_number("BENCH_CLIENTS", 4))
    workers = int(common.env_number("BENCH_WORKERS", 4))

    # A private Redis: the run's breaker state and counters are its own (and nothing shared is flushed).
    with RedisServer() as redis_server, TcpProxy(5432) as proxy:
        common.setup_django(REDIS_URL=redis_server.url)
        book_id = _prepare()
        machine = common.machine()
        common.close_django_connections()
        api_path = f"/api/books/{book_id}"
        env = common.bench_env(DATABASE_URL=proxy.url(common.DATABASE_URL), REDIS_URL=redis_server.url)
        log = common.RESULTS_DIR / f"{NAME}.gunicorn.log"
        with common.gunicorn(workers=workers, threads=1, env=env, log=log, probe_path=api_path) as server:
            began = time.monotonic()
            spec = {
                "host": server.host,
                "port": server.port,
                "api_path": api_path,
                "clients": clients,
                "until": began + warmup + outage + after,
                "timeout": 30.0,
                "max_records": 200_000,
            }
            generator = subprocess.Popen(
                [common.PYTHON, "-m", "bench.pg_outage", "--load"],
                cwd=common.ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert generator.stdin is not None
                assert generator.stdout is not None
                generator.stdin.write(json.dumps(spec))
                generator.stdin.close()
                time.sleep(max(0.0, began + warmup - time.monotonic()))
                t_out = time.monotonic()
                proxy.refuse()
                time.sleep(max(0.0, t_out + outage - time.monotonic()))
                t_back = time.monotonic()
                proxy.restore()
                records = json.loads(generator.stdout.read())
                generator.wait(timeout=60)
            finally:
                common.stop_process(generator, grace=2)
            t_end = time.monotonic()

    figures = analyse(records, began, t_out, t_back, t_end)
    results = {
        "machine": machine,
        "config": {"workers": workers, "clients": clients, "warmup": warmup, "outage": outage, "after": after},
        "figures": figures,
        "checks": checks(figures),
    }
    path = common.write_results(NAME, results)
    _report(figures, results["checks"])
    print(f"written: {path.relative_to(common.ROOT)}")
    return 0 if all(results["checks"].values()) else 1


def _report(figures: dict[str, Any], passed: dict[str, bool]) -> None:
    during, known = figures["api_during_outage"], figures["api_once_known_down"]
    live = figures["live_during_outage"]
    print(f"outage: {figures['outage_seconds']} s of refused PostgreSQL connections")
    print(
        f"API before:             {figures['api_before']['per_second']} req/s, p50 {figures['api_before']['p50_ms']} ms"
    )
    print(f"API during the outage:  {during['count']} requests, {during['per_second']} req/s, "
          f"p50 {during['p50_ms']} ms, p99 {during['p99_ms']} ms, max {during['max_ms']} ms")  # fmt: skip
    print(f"API once known down:    {known['count']} requests from {known['known_down_after_s']} s in, "
          f"p50 {known['p50_ms']} ms, p99 {known['p99_ms']} ms")  # fmt: skip
    print(f"/health/live in outage: {live['count']} probes, p50 {live['p50_ms']} ms, p99 {live['p99_ms']} ms, "
          f"max {live['max_ms']} ms")  # fmt: skip
    print(
        f"statuses in outage:     {figures['api_statuses_during_outage']}, Retry-After {figures['retry_after_values']}"
    )
    print(f"5xx / errors:           {figures['server_errors']}")
    print(f"ops endpoints:          {figures['ops_statuses']}")
    print(f"first success:          {figures['first_success_after_return_s']} s after PostgreSQL came back")
    for name, ok in passed.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--load"]:
        load_main()
    else:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        sys.exit(main())
