"""scenario: the shop under attack (docs/benchmarks.md.in); `python -m bench.scenario judge` judges again."""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import lib, verdict

NAME = "scenario"
WORKERS, BOOKS, CUSTOMERS, HOT_BOOKS = 4, 2000, 400, 3
HOT_STOCK = 80  # per hot book: legitimate orders and the first spike sell most of it, the second sells out
SPIKE_CUSTOMERS = 60  # per spike, all within spike_seconds (docs/benchmarks.md.in)
# Seconds after the start. The first seconds warm the server up and are left out of the latency figures.
TIMELINE = {"warmup": [0, 8], "baseline": [8, 28], "attack": [28, 136], "fault_on": 58, "fault_off": 88}
TIMELINE |= {"slow_on": 118, "slow_off": 135, "spikes": [38, 103], "end": 146, "spike_seconds": 2.0}
SLOW_MS = 1000  # every search's wait in the slowdown, under the search breaker's slow-call threshold (2 s)
RATES = {"legit_rate": 35.0, "crawler_rate": 200.0, "bot_rate": 20.0}  # per second; legit: all users together
METRICS = ("bookstore_ratelimit_decisions_total", "bookstore_breaker_transitions_total", "bookstore_breaker_rej")
METRICS += ("bookstore_concurrency_decisions_total",)
SHAPES_KEPT = 5  # runs kept per server shape in bench/results/scenario-shapes.json
LIMIT_FIELDS = "name methods pattern key algorithm limit period burst mode"  # what the report and the checks read
BREAKER_FIELDS = "name failure_threshold failure_rate window_size minimum_calls slow_call_ms open_seconds"
BREAKER_FIELDS += " half_open_max_calls"


def seed(threads: int) -> dict[str, Any]:
    """Create the catalogue, hot books, customers and staff, size the search bulkhead; return what the run needs."""
    from django.core.management import call_command

    from accounts.models import User
    from accounts.services import token_create
    from catalog.models import Book
    from resilience.models import CircuitBreakerPolicy, ConcurrencyPolicy, RateLimitPolicy

    call_command("demo_data", books=BOOKS, seed=11, verbosity=0)
    ids = list(Book.objects.order_by("pk").values_list("pk", flat=True))
    Book.objects.filter(pk__in=ids[10 : 10 + HOT_BOOKS]).update(stock=HOT_STOCK)
    limits = RateLimitPolicy.objects.filter(enabled=True).values(*LIMIT_FIELDS.split())
    breakers = CircuitBreakerPolicy.objects.filter(enabled=True).values(*BREAKER_FIELDS.split())
    # The data migration's bulkhead, sized so that no worker is ever all slow searches (docs/benchmarks.md.in).
    ConcurrencyPolicy.objects.filter(name="search").update(max_in_flight=max(1, threads - 1), max_wait_ms=0)
    bulkheads = ConcurrencyPolicy.objects.filter(enabled=True).values("name", "pattern", "max_in_flight", "max_wait_ms")
    out = {"book_ids": ids, "hot_ids": ids[10 : 10 + HOT_BOOKS], "list_pages": len(ids) // 20}
    in_stock = Book.objects.filter(stock__gte=10).exclude(pk__in=out["hot_ids"])
    out |= {"in_stock_ids": list(in_stock.values_list("pk", flat=True)), "tokens": lib.customers(CUSTOMERS, "customer")}
    out["initial_stock"] = dict(Book.objects.values_list("pk", "stock"))
    out["staff_token"] = token_create(user=User.objects.get(username="staff")).token
    out["policies"] = {"ratelimits": {p["name"]: p for p in limits}, "breakers": {b["name"]: b for b in breakers}}
    out["policies"]["bulkheads"] = {b["name"]: b for b in bulkheads}
    for b in out["policies"]["breakers"].values():
        b["failure_rate"] = float(b["failure_rate"])
    return out


def db_checks(initial: dict[int, int], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the orders as the database holds them against what the answers said: ids, stock, cancels."""
    from django.db.models import Sum

    from catalog.models import Book
    from orders.models import Order, OrderLine

    created = {r["extra"][2] for r in records if r["endpoint"] in ("order", "order-replay") and r["status"] == 201}
    cancelled = {r["extra"] for r in records if r["endpoint"] == "cancel" and r["status"] == 200}
    stored, current = set(Order.objects.values_list("pk", flat=True)), dict(Book.objects.values_list("pk", "stock"))
    lines = OrderLine.objects.exclude(order__status=Order.Status.CANCELLED).values("book_id")
    sold = dict(lines.annotate(q=Sum("quantity")).values_list("book_id", "q"))
    applied = Order.objects.filter(pk__in=cancelled, status=Order.Status.CANCELLED).values_list("pk", flat=True)
    broken = {pk: [n, current.get(pk), sold.get(pk, 0)] for pk, n in initial.items()}
    broken = {pk: x for pk, x in broken.items() if x[0] != (x[1] if x[1] is not None else -1) + x[2]}
    out = {"orders_201": len(created), "orders_201_missing": sorted(created - stored)[:20], "stock_broken": broken}
    out |= {"orders_without_201": sorted(stored - created)[:20], "books_checked": len(initial)}
    out |= {"negative_stock": sum(v < 0 for v in current.values()), "cancelled_200": len(cancelled)}
    return out | {"cancelled_not_applied": sorted(cancelled - set(applied))}


def cpu_ticks() -> list[int]:
    """Return [busy, stolen, total] jiffies of the whole machine (busy: user, nice, system, irq, softirq)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    busy = user + nice + system + irq + softirq
    return [busy, steal, busy + steal + idle + iowait]


def sample(t0: float, db: str, samples: list[list[Any]], stop: threading.Event) -> None:
    """Until stopped, every 250 ms: [s, the database's connections, active ones, machine CPU busy %, stolen %]."""
    import psycopg

    sql = "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity WHERE datname = %s"
    with psycopg.connect(f"{lib.PG}postgres", autocommit=True) as conn:
        last, n = cpu_ticks(), 0
        while not stop.wait(max(0.0, t0 + n * 0.25 - time.monotonic())):
            n, row, ticks = n + 1, conn.execute(sql, (db,)).fetchone(), cpu_ticks()
            busy, stolen = (round(100 * (ticks[i] - last[i]) / max(1, ticks[2] - last[2]), 1) for i in (0, 1))
            samples.append([round(time.monotonic() - t0, 3), *row, busy, stolen])
            last = ticks


def run() -> dict[str, Any]:
    """Seed, serve, play the timeline; return everything the verdict and the report read."""
    threads, pool = lib.knobs(scenario_threads=4, scenario_pool=4).values()  # threads and DB_POOL_MAX per worker
    with lib.prepared(NAME) as (url, redis):
        db, began = url.rsplit("/", 1)[1], time.monotonic()
        s = seed(threads)
        seed_seconds, machine = round(time.monotonic() - began, 1), lib.machine(redis)
        env = {"FAULT_INJECTION": "true", "TRUSTED_PROXY_COUNT": "1", "DB_POOL_MIN": "1", "DB_POOL_MAX": str(pool)}
        with lib.server(workers=WORKERS, threads=threads, **env) as server:
            t0 = time.monotonic() + 1.5  # 1.5 s: the actors start up
            spec = {"host": "127.0.0.1", "port": server.port, "t0": t0, "seed": 20251126}
            spec |= {**TIMELINE, **RATES, "words": lib.WORDS.split(), "slow_ms": SLOW_MS}
            spec["spike_customers"] = SPIKE_CUSTOMERS
            spec |= {k: s[k] for k in ("tokens", "book_ids", "in_stock_ids", "hot_ids", "list_pages", "staff_token")}
            db_samples, stop = [], threading.Event()
            (sampler := threading.Thread(target=sample, args=(t0, db, db_samples, stop), daemon=True)).start()
            with lib.spent(server, redis) as spent:
                cpu = redis.info("cpu")
                load = lib.child("bench.actors", spec, timeout=TIMELINE["end"] + 99)
                cpu = {k: redis.info("cpu")[k] - cpu[k] for k in ("used_cpu_sys", "used_cpu_user")}
            stop.set()
            sampler.join()
            counted = lib.metrics(server.port, *METRICS)
            timings = {f[3]: [int(f[1]), int(f[2])] for f in server.access_lines() if f[3].startswith("sc")}
        records = [dict(zip(load["fields"], r, strict=True)) for r in load.pop("records")]
        checks = db_checks(s["initial_stock"], records)
        lib.release_db()
    out = {"machine": machine, "records": records, "samples": load.pop("samples"), "db_samples": db_samples}
    out |= {"server_timings": timings, "load": load, "db_checks": checks, "metrics": counted}
    out |= {"server_cpu_seconds": round(spent["cpu_seconds"], 2), "redis_cpu_seconds": round(sum(cpu.values()), 2)}
    out |= {"redis_script_calls": sum(spent["redis_calls"].get(k, 0) for k in lib.SCRIPTS)}
    from django.contrib.auth.hashers import get_hasher

    hasher = get_hasher()  # the app's: what one password check costs here (unknown users pay it too)
    encoded, began = hasher.encode("right-password", hasher.salt()), time.process_time()
    hasher.verify("wrong-password", encoded)
    out |= {"hasher": hasher.algorithm, "hash_seconds": round(time.process_time() - began, 3)}
    config = {"workers": WORKERS, "threads": threads, "db_pool_max": pool, "db_ceiling": WORKERS * pool, "books": BOOKS}
    config |= {"customers": CUSTOMERS, "hot_books": s["hot_ids"], "hot_stock": HOT_STOCK, "slow_ms": SLOW_MS}
    config |= {"spike_customers": SPIKE_CUSTOMERS, "timeline": TIMELINE, "rates": RATES, "seed_seconds": seed_seconds}
    config["policies"] = s["policies"]
    return out | {"config": config, "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}


def main() -> int:
    records = lib.RESULTS / f"{NAME}.records.json"
    if sys.argv[1:] == ["judge"]:  # the last run, again
        results = json.loads((lib.RESULTS / f"{NAME}.json").read_text()) | json.loads(records.read_text())
    else:
        results = run()
        # What the charts are drawn from (bench/charts.py); the verdict's figures go to scenario.json.
        records.write_text(json.dumps({k: results[k] for k in ("records", "samples", "server_timings")}))
    judged = verdict.judge(results)
    results = {k: v for k, v in results.items() if k not in ("records", "samples", "server_timings")}
    # This run's key figures, kept with the last few runs of its server shape; all kept are shown, this one first.
    path, cfg = lib.RESULTS / f"{NAME}-shapes.json", results["config"]
    mine = {"shape": f"{cfg['workers']} x {cfg['threads']}", "db_pool_max": cfg["db_pool_max"],
            "finished_at": results["finished_at"], **judged["shape_figures"],
            "server_cpu_s": results["server_cpu_seconds"], "cpu_probe_ms": results["machine"]["cpu_probe_ms"],
            "failed": ", ".join(c["name"] for c in judged["checks"] if not c["ok"]) or "none"}  # fmt: skip
    runs = [r for r in json.loads(path.read_text()) if r["finished_at"] != mine["finished_at"]] if path.exists() else []
    kept = [r for r in runs if r["shape"] != mine["shape"]]
    kept += [r for r in runs if r["shape"] == mine["shape"]][-(SHAPES_KEPT - 1) :] + [mine]
    path.write_text(json.dumps(kept, indent=1) + "\n")
    return lib.finish(NAME, **(results | judged | {"shapes": [mine, *(r for r in reversed(kept) if r is not mine)]}))


if __name__ == "__main__":
    sys.exit(main())
