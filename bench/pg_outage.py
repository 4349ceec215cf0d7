"""pg_outage: what a PostgreSQL outage costs the API, and the return (docs/benchmarks.md.in)."""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from bench import lib
from tests.live import TcpProxy

NAME = "pg_outage"
LIVE, OPS = "/health/live", ("/health/breakers", "/metrics")
OPEN_P99_MS, LIVE_P99_MS, RECOVERY_S = 50.0, 50.0, 1.5
DATABASE_REFUSED = re.compile(r'"breaker"\s*:\s*"database"')  # in a 503 problem: the database breaker refused
Record = list[Any]  # bench/client.py's: path, start, seconds, status (0: none), problem body or error, Retry-After


def summary(phase: str, rows: list[Record], lo: float, hi: float) -> dict[str, Any]:
    """Return the figures of the rows sent in [lo, hi)."""
    took = [r[2] * 1000 for r in rows if lo <= r[1] < hi]
    out = {"phase": phase, "count": len(took), "per_second": round(len(took) / (hi - lo), 1) if hi > lo else 0.0}
    out |= {f"p{q}_ms": round(lib.percentile(took, q), 2) for q in (50, 99)}
    return out | {"max_ms": round(max(took or [0]), 2)}


def analyse(records: list[Record], api: str, t_out: float, t_back: float) -> dict[str, Any]:
    """Return the figures of one run from the client's records and the proxy's timeline (monotonic seconds)."""
    calls, live, ops = ([r for r in records if r[0] in paths] for paths in ((api,), (LIVE,), OPS))
    t_start, t_end = min(r[1] for r in records), max(r[1] + r[2] for r in records)
    during = [r for r in calls if t_out <= r[1] < t_back]
    # "Known down": requests sent after the first answer that says the database breaker refused.
    known_at = min((r[1] + r[2] for r in during if r[3] == 503 and DATABASE_REFUSED.search(r[4])), default=t_back)
    first_ok = min((r[1] + r[2] for r in calls if r[1] >= t_back and r[3] == 200), default=None)
    fives = Counter(f"{r[0]} {r[3] or r[4]}" for r in records if r[3] >= 500 or r[3] == 0)
    return {
        "api_before": summary("API before the outage", calls, t_start, t_out),
        "api_during_outage": summary("API during the outage", calls, t_out, t_back),
        "api_once_known_down": summary("API once known down", calls, known_at, t_back),
        "api_after_return": summary("API after PostgreSQL's return", calls, t_back, t_end),
        "live_during_outage": summary("/health/live during the outage", live, t_out, t_back),
        "ops_during_outage": summary("/health/breakers and /metrics during the outage", ops, t_out, t_back),
        "outage_seconds": round(t_back - t_out, 2), "timeline_seconds": round(t_end - t_out, 2),
        "known_down_after_s": round(known_at - t_out, 3) if known_at < t_back else None,
        "api_statuses_during_outage": dict(Counter(str(r[3]) for r in during)),
        "retry_after_values": dict(Counter(r[5] for r in during if r[3] == 503)),
        "api_503_without_problem_or_retry_after": sum(r[3] == 503 and not (r[4] and r[5]) for r in during),
        "api_other_statuses": sum(r[3] not in (200, 503) for r in calls),
        "live_non_200": sum(r[3] != 200 for r in live),
        "ops_statuses": dict(Counter(f"{r[0]} {r[3]}" for r in ops)),
        "server_errors": dict(sorted(fives.items())),
        "first_success_after_return_s": round(first_ok - t_back, 3) if first_ok is not None else None,
    }  # fmt: skip


def checks(f: dict[str, Any]) -> list[dict[str, Any]]:
    known, live, back = f["api_once_known_down"], f["live_during_outage"], f["first_success_after_return_s"]
    other, bare = f["api_other_statuses"], f["api_503_without_problem_or_retry_after"]
    return [
        lib.check("API answers only 200 or 503", other == 0, other, 0),
        lib.check("every 503 a problem+json with Retry-After", bare == 0, bare, 0),
        lib.check("the database breaker refuses during the outage", f["known_down_after_s"] is not None and
                  known["count"], f"{known['count']} requests from {f['known_down_after_s']} s in", "some"),
        lib.check("API p99 once known down", known["count"] and known["p99_ms"] < OPEN_P99_MS,
                  f"{known['p99_ms']} ms", f"< {OPEN_P99_MS:g} ms"),
        lib.check("/health/live p99 through the outage, every answer 200", live["p99_ms"] < LIVE_P99_MS and
                  not f["live_non_200"], f"{live['p99_ms']} ms, {f['live_non_200']} not 200", f"< {LIVE_P99_MS:g} ms"),
        lib.check("/health/breakers and /metrics always 200", all(k.endswith(" 200") for k in f["ops_statuses"]),
                  lib.listing(f["ops_statuses"]), "200 only"),
        lib.check("first success after PostgreSQL's return", back is not None and back < RECOVERY_S, f"{back} s",
                  f"< {RECOVERY_S:g} s"),
    ]  # fmt: skip


def main() -> int:
    cfg = lib.knobs(warmup=3.0, outage=10.0, after=5.0, clients=4, workers=4)
    with lib.prepared(NAME) as (url, redis), TcpProxy(5432) as proxy:
        from catalog.services import book_create

        book = book_create(isbn="9780000000002", title="The Outage", price=Decimal("10"), stock=100, authors=["A"])
        api, machine = f"/api/books/{book.pk}", lib.machine(redis)
        clients = [{"method": "GET", "path": api}] * cfg["clients"] + [{"method": "GET", "path": LIVE, "every": 0.05}]
        clients += [{"method": "GET", "path": path, "every": 0.5} for path in OPS]
        spec = {"duration": cfg["warmup"] + cfg["outage"] + cfg["after"], "timeout": 30.0, "count": 200_000}
        # Sync workers, a fresh connection per request: the shape the README's outage figures describe.
        size = {"workers": cfg["workers"], "threads": 1, "GUNICORN_WORKER_CLASS": "sync"}
        with lib.server(**size, ready=api, DATABASE_URL=proxy.url(url)) as server, ThreadPoolExecutor(1) as pool:
            run = pool.submit(lib.load, server, clients, **spec, tally=["Retry-After"], records=True)
            time.sleep(cfg["warmup"])
            t_out = time.monotonic()
            proxy.refuse()  # open connections cut, new ones refused: as when PostgreSQL's process dies
            time.sleep(cfg["outage"])
            t_back = time.monotonic()
            proxy.restore()
            f = analyse(run.result()["records"], api, t_out, t_back)

    columns = ["phase", "requests", "req/s", "p50 ms", "p99 ms", "max ms"]
    rows = [list(x.values()) for x in f.values() if isinstance(x, dict) and "phase" in x]
    figures = [
        ["outage: PostgreSQL's connections refused for", f"{f['outage_seconds']} s"],
        ["known down (the first 503 from the database breaker) after", f"{f['known_down_after_s']} s"],
        ["API statuses during the outage", lib.listing(f["api_statuses_during_outage"])],
        ["Retry-After values of those 503s", lib.listing(f["retry_after_values"])],
        ["5xx and transport errors, by endpoint", lib.listing(f["server_errors"]) or "none"],
        ["/health/breakers and /metrics answers", lib.listing(f["ops_statuses"])],
        ["first success after PostgreSQL's return", f"{f['first_success_after_return_s']} s"],
    ]
    return lib.finish(NAME, machine=machine, config=cfg, columns=columns, rows=rows, figures=figures, outage=f,
                      checks=checks(f))  # fmt: skip
