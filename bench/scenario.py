"""Under attack: legitimate customers keep being served while crawlers, bots, spikes and a failing dependency hit.

One command (`bench/run scenario`), loopback only, about six minutes with the micro-benchmarks:

1. Seed the scenario database: a 2,000-book demo catalogue, three hot books with known stock,
   400 customers with tokens, the staff account (fast hasher in this process only).
2. Start gunicorn (4 gthread workers, DB_POOL_MAX per worker set explicitly) with the DEFAULT
   policies of the data migrations, FAULT_INJECTION=true and TRUSTED_PROXY_COUNT=1, so that the
   load generator presents one client address per simulated client in X-Forwarded-For, as a proxy
   would. gunicorn writes an access log with each request's id and service time (server side).
3. Run bench/scenario_load.py (one asyncio process) through the phases: baseline (legitimate users
   only), attack (legitimate users plus a crawler, a credential-stuffing bot, two order spikes, and
   30 s in the middle when the search dependency fails, switched by staff through the ops API),
   cool-down. Meanwhile this process samples PostgreSQL's connection count and the machine's CPU
   (busy, stolen) every 250 ms.
4. Check the invariants in the database (every 201 order exists, stock is conserved per book),
   evaluate the assertions, draw the charts, rerun the micro-benchmarks of bench/run and write
   docs/benchmarks.md (bench/scenario_report.py).

The scenario uses its own database (bookstore_bench_scenario) and a private redis-server: the
micro-benchmarks drop and recreate bookstore_bench, and the connection-count check must see this
server's connections only. Knobs: BENCH_SCENARIO_MICRO=0 reuses the micro-benchmarks' last
bench/results/*.json instead of rerunning them; `python -m bench.scenario --report` redraws the
report and charts of the last run from bench/results; BENCH_SCENARIO_THREADS (4) and
BENCH_SCENARIO_POOL (4) set gunicorn threads and DB_POOL_MAX per worker.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common
from tests.live import RedisServer

NAME = "scenario"
DB_NAME = f"{common.BENCH_DB}_scenario"
DATABASE_URL = f"{common.PG_SERVER_URL}{DB_NAME}"
WORKERS = 4
THREADS = 4  # per worker; BENCH_SCENARIO_THREADS overrides (see the notes for why 4)
POOL_MAX = 4  # DB_POOL_MAX per worker: one connection per thread; BENCH_SCENARIO_POOL overrides
BOOKS = 2000
CUSTOMERS = 400
HOT_BOOKS = 3
HOT_STOCK = 80  # per hot book: legitimate orders and the first spike sell most of it, the second sells out
# Customers per spike, all within spike_seconds: 30 orders/s on top of everything else, about what
# the two cores have left during the attack (an order costs ~20 ms of CPU; the crawler's refusals,
# the legitimate load and the generator take 60-65%). A bigger spike is a capacity question:
# every request, legitimate or not, then queues for a CPU, whatever the resilience layer does.
SPIKE_CUSTOMERS = 60

# Seconds after the start. The first seconds warm the server up (pools, caches) and are left out
# of the latency figures; the fault switches on 30 s into the attack and off 30 s later.
TIMELINE: dict[str, Any] = {
    "warmup": [0.0, 8.0],
    "baseline": [8.0, 28.0],
    "attack": [28.0, 118.0],
    "fault_on": 58.0,
    "fault_off": 88.0,
    "spikes": [38.0, 103.0],
    "spike_seconds": 2.0,
    "end": 128.0,
}
RATES = {
    "legit_rate": 35.0,  # actions per second, all legitimate users together (Poisson arrivals)
    "crawler_rate": 200.0,  # searches per second from one address
    "bot_rate": 20.0,  # token requests per second from one address
}
WORDS = (
    "river night garden machine city silence winter letters stone memory light shadow kingdom map harbour "
    "algorithm engine clock signal mirror forest station archive ocean ember voyage library bridge compass"
).split()
ACCESS_LOG_FORMAT = "%({x-request-id}i)s %(s)s %(D)s"  # request id, status, service time in µs


def _address(block: int, n: int) -> str:
    """Return the n-th client address of a block: 10.<block>.<n // 250>.<n % 250 + 1>."""
    return f"10.{block}.{n // 250}.{n % 250 + 1}"


# --- Database ----------------------------------------------------------------------------------


def _setup_django(redis_url: str) -> None:
    """Recreate the scenario database, point this process at it, migrate (default policies included)."""
    import psycopg

    with psycopg.connect(f"{common.PG_SERVER_URL}postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    os.environ.update(common.bench_env(DATABASE_URL=DATABASE_URL, REDIS_URL=redis_url, FAULT_INJECTION="true"))
    sys.path.insert(0, str(common.ROOT))

    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    # Customers only ever use tokens; the production hasher would spend ~0.6 s per account here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    call_command("migrate", interactive=False, verbosity=0)


def _policies() -> dict[str, dict[str, Any]]:
    """Return the rate-limit and breaker policies the server starts with, as the migrations left them."""
    from resilience.models import CircuitBreakerPolicy, RateLimitPolicy

    limits = RateLimitPolicy.objects.filter(enabled=True).values(
        "name", "methods", "pattern", "key", "algorithm", "limit", "period", "burst", "mode"
    )
    breakers = CircuitBreakerPolicy.objects.filter(enabled=True).values(
        "name", "failure_threshold", "failure_rate", "window_size", "minimum_calls", "slow_call_ms",
        "open_seconds", "half_open_max_calls",
    )  # fmt: skip
    return {
        "ratelimits": {p["name"]: p for p in limits},
        "breakers": {b["name"]: {**b, "failure_rate": float(b["failure_rate"])} for b in breakers},
    }


def _seed() -> dict[str, Any]:
    """Create the catalogue, hot books, customers and staff; return what the load generator needs."""
    from django.core.management import call_command

    from accounts.models import User
    from accounts.services import token_create, user_create
    from catalog.models import Book

    call_command("demo_data", books=BOOKS, seed=11, stdout=io.StringIO())
    book_ids = list(Book.objects.order_by("pk").values_list("pk", flat=True))
    hot_ids = book_ids[10 : 10 + HOT_BOOKS]
    Book.objects.filter(pk__in=hot_ids).update(stock=HOT_STOCK)
    in_stock_ids = list(Book.objects.filter(stock__gte=10).exclude(pk__in=hot_ids).values_list("pk", flat=True))
    tokens = [
        token_create(
            user=user_create(username=f"customer{n}", email=f"customer{n}@bench.invalid", password="unused-pw")
        ).token
        for n in range(CUSTOMERS)
    ]
    staff = User.objects.get(username="staff")
    return {
        "book_ids": book_ids,
        "hot_ids": hot_ids,
        "in_stock_ids": in_stock_ids,
        "tokens": tokens,
        "staff_token": token_create(user=staff).token,
        "initial_stock": dict(Book.objects.values_list("pk", "stock")),
        "list_pages": max(1, len(book_ids) // 20),
    }


def _db_checks(seed: dict[str, Any], created_ids: set[int], cancelled_ids: set[int]) -> dict[str, Any]:
    """Check the orders against the database: every 201 exists, stock conserved, cancels applied."""
    from django.db.models import Sum

    from catalog.models import Book
    from orders.models import Order, OrderLine

    found = set(Order.objects.filter(pk__in=created_ids).values_list("pk", flat=True))
    all_orders = set(Order.objects.values_list("pk", flat=True))
    sold = dict(
        OrderLine.objects.exclude(order__status=Order.Status.CANCELLED)
        .values("book_id")
        .annotate(q=Sum("quantity"))
        .values_list("book_id", "q")
    )
    current = dict(Book.objects.values_list("pk", "stock"))
    broken = {
        pk: {"initial": initial, "current": current.get(pk), "sold": sold.get(pk, 0)}
        for pk, initial in seed["initial_stock"].items()
        if initial != current.get(pk, -1) + sold.get(pk, 0)
    }
    hot = {
        pk: {"initial": seed["initial_stock"][pk], "current": current[pk], "sold": sold.get(pk, 0)}
        for pk in seed["hot_ids"]
    }
    not_cancelled = set(
        Order.objects.filter(pk__in=cancelled_ids).exclude(status=Order.Status.CANCELLED).values_list("pk", flat=True)
    )
    return {
        "orders_201": len(created_ids),
        "orders_201_found": len(found),
        "orders_201_missing": sorted(created_ids - found)[:20],
        "orders_in_db": len(all_orders),
        "orders_without_201": sorted(all_orders - created_ids)[:20],
        "books_checked": len(seed["initial_stock"]),
        "stock_broken": broken,
        "hot_books": hot,
        "cancelled_200": len(cancelled_ids),
        "cancelled_not_applied": sorted(not_cancelled),
        "negative_stock": sum(1 for v in current.values() if v < 0),
    }


# --- Samplers and server side ------------------------------------------------------------------


def _cpu_ticks() -> tuple[int, int, int]:
    """Return (busy, stolen, total) jiffies of the whole machine from /proc/stat.

    Busy is user + nice + system + irq + softirq; stolen is time the hypervisor gave this VM's
    CPUs to someone else.
    """
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + steal + idle + iowait


class ConnectionSampler(threading.Thread):
    """Every 250 ms: the scenario database's PostgreSQL connections, and how busy the machine's CPUs were.

    Samples are [seconds, connections, active connections, CPU busy %, CPU stolen %], the last two of
    all cores together since the previous sample.
    """

    def __init__(self, t0: float) -> None:
        super().__init__(daemon=True)
        self.t0 = t0
        self.samples: list[list[float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(f"{common.PG_SERVER_URL}postgres", autocommit=True) as conn:
            n = 0
            last = _cpu_ticks()
            while not self.stop.is_set():
                at = self.t0 + n * 0.25
                n += 1
                delay = at - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    break
                row = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
                    "WHERE datname = %s",
                    (DB_NAME,),
                ).fetchone()
                ticks = _cpu_ticks()
                total = max(1, ticks[2] - last[2])
                busy, stolen = (100 * (ticks[i] - last[i]) / total for i in (0, 1))
                last = ticks
                self.samples.append(
                    [round(time.monotonic() - self.t0, 3), row[0], row[1], round(busy, 1), round(stolen, 1)]
                )


def _access_log(path: Path) -> dict[str, list[int]]:
    """Return {request id: [status, service µs]} from gunicorn's access log."""
    timings: dict[str, list[int]] = {}
    pattern = re.compile(r"^(sc\d+) (\d{3}) (\d+)$")
    for line in path.read_text(errors="replace").splitlines():
        match = pattern.match(line.strip())
        if match:
            timings[match.group(1)] = [int(match.group(2)), int(match.group(3))]
    return timings


def _metrics(server: common.Server) -> dict[str, float]:
    """Return bookstore_ratelimit_decisions_total and breaker counters summed over the workers."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    wanted = ("bookstore_ratelimit_decisions_total", "bookstore_breaker_transitions_total", "bookstore_breaker_rej")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


def cpu_probe_ms() -> float:
    """Return the best of three timings of a fixed pure-Python loop (ms): this VM's speed right now.

    The same code and load can cost a quarter more CPU from one run to the next on a shared host;
    the probe, taken just before the load starts, lets runs be compared.
    """
    best = math.inf
    for _ in range(3):
        began = time.process_time()
        sum(i * i for i in range(1_000_000))
        best = min(best, time.process_time() - began)
    return round(best * 1000, 1)


def machine(redis_version: str) -> dict[str, Any]:
    import django
    import gunicorn
    import psycopg

    with psycopg.connect(DATABASE_URL) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.partition(":")[2].strip()
            break
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "cpu_probe_ms": cpu_probe_ms(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "postgresql": (row[0] if row else "?").split()[0],
        "redis": redis_version,
        "gunicorn": gunicorn.__version__,
        "platform": platform.platform(terse=True),
    }


# --- The run -----------------------------------------------------------------------------------


def run_scenario() -> dict[str, Any]:
    threads = int(common.env_number("BENCH_SCENARIO_THREADS", THREADS))
    pool_max = int(common.env_number("BENCH_SCENARIO_POOL", POOL_MAX))
    with RedisServer() as redis_server:
        _setup_django(redis_server.url)
        t_seed = time.monotonic()
        seed = _seed()
        seed_seconds = time.monotonic() - t_seed
        policies = _policies()
        redis_client = redis_server.client()
        redis_version = redis_client.info("server")["redis_version"]
        info = machine(redis_version)
        common.close_django_connections()

        metrics_dir = Path(tempfile.mkdtemp(prefix="scenario-metrics-"))
        access_log = common.RESULTS_DIR / f"{NAME}.access.log"
        common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        access_log.unlink(missing_ok=True)
        env = common.bench_env(
            DATABASE_URL=DATABASE_URL,
            REDIS_URL=redis_server.url,
            FAULT_INJECTION="true",
            TRUSTED_PROXY_COUNT="1",
            DB_POOL_MIN="1",
            DB_POOL_MAX=str(pool_max),
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
            GUNICORN_CMD_ARGS=shlex.join(
                [
                    "--access-logfile",
                    str(access_log),
                    "--access-logformat",
                    ACCESS_LOG_FORMAT,
                    "--logger-class",
                    "bench.accesslog.ServiceTimeLogger",  # the same fields, a sixth of the cost
                ]  # fmt: skip
            ),
        )
        customers = [[token, _address(1, n)] for n, token in enumerate(seed["tokens"])]
        spike_customers = [
            [[seed["tokens"][(s * 97 + n) % CUSTOMERS], _address(2 + s, n)] for n in range(SPIKE_CUSTOMERS)]
            for s in range(len(TIMELINE["spikes"]))
        ]
        output = common.RESULTS_DIR / f"{NAME}.records.json"
        log = common.RESULTS_DIR / f"{NAME}.gunicorn.log"
        try:
            with common.gunicorn(workers=WORKERS, threads=threads, env=env, log=log) as server:
                cpu_before = common.server_cpu_seconds(server)
                redis_cpu_before = _redis_cpu(redis_client)
                scripts_before = common.script_calls(common.redis_command_calls(redis_client))
                t0 = time.monotonic() + 1.5  # the generator's start-up happens before the first second
                spec = {
                    "host": server.host,
                    "port": server.port,
                    "t0": t0,
                    "timeout": 30.0,
                    "seed": 20251126,
                    "output": str(output),
                    **TIMELINE,
                    **RATES,
                    "users": customers,
                    "spike_customers": spike_customers,
                    "crawler_ip": _address(9, 0),
                    "bot_ip": _address(9, 1),
                    "staff_ip": _address(8, 0),
                    "staff_token": seed["staff_token"],
                    "book_ids": seed["book_ids"],
                    "in_stock_ids": seed["in_stock_ids"],
                    "hot_ids": seed["hot_ids"],
                    "list_pages": seed["list_pages"],
                    "words": WORDS,
                }
                sampler = ConnectionSampler(t0)
                sampler.start()
                proc = subprocess.run(
                    [common.PYTHON, "-m", "bench.scenario_load"],
                    cwd=common.ROOT,
                    input=json.dumps(spec),
                    capture_output=True,
                    text=True,
                    timeout=TIMELINE["end"] + 120,
                    check=False,
                )
                sampler.stop.set()
                sampler.join()
                if proc.returncode != 0:
                    raise RuntimeError(f"load generator failed ({proc.returncode}):\n{proc.stderr}")
                server_cpu = common.server_cpu_seconds(server) - cpu_before
                redis_cpu = _redis_cpu(redis_client) - redis_cpu_before
                redis_scripts = common.script_calls(common.redis_command_calls(redis_client)) - scripts_before
                metrics = _metrics(server)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        redis_client.close()
        load = json.loads(output.read_text())
        fields = load["fields"]
        records = [dict(zip(fields, r, strict=True)) for r in load.pop("records")]
        created, cancelled = _order_ids(records)
        checks = _db_checks(seed, created, cancelled)
        common.close_django_connections()

    return {
        "benchmark": NAME,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "config": {
            "workers": WORKERS,
            "threads": threads,
            "worker_class": "gthread",
            "db_pool_max": pool_max,
            "db_ceiling": WORKERS * pool_max,
            "books": BOOKS,
            "customers": CUSTOMERS,
            "hot_books": seed["hot_ids"],
            "hot_stock": HOT_STOCK,
            "spike_customers": SPIKE_CUSTOMERS,
            "timeline": TIMELINE,
            "rates": RATES,
            "policies": policies,
            "seed_seconds": round(seed_seconds, 1),
            "server_command": f"gunicorn bookstore.wsgi -w {WORKERS} --worker-class gthread --threads {threads} "
            f"--preload --keep-alive 5 (DB_POOL_MAX={pool_max}, TRUSTED_PROXY_COUNT=1, FAULT_INJECTION=true)",
        },
        "records": records,
        "samples": load.pop("samples"),
        "db_samples": sampler.samples,
        "server_timings": _access_log(access_log),
        "load": load,
        "server_cpu_seconds": round(server_cpu, 2),
        "redis_cpu_seconds": round(redis_cpu, 2),
        "redis_script_calls": redis_scripts,
        "metrics": metrics,
        "db_checks": checks,
    }


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _order_ids(records: list[dict[str, Any]]) -> tuple[set[int], set[int]]:
    created: set[int] = set()
    cancelled: set[int] = set()
    for r in records:
        if r["endpoint"] in ("order", "order-replay") and r["status"] == 201 and r["extra"] and len(r["extra"]) >= 3:
            created.add(r["extra"][2])
        elif r["endpoint"] == "cancel" and r["status"] == 200:
            cancelled.add(int(r["extra"]))
    return created, cancelled


def _hash_cost() -> tuple[str, float]:
    """Return the app's password hasher and the CPU seconds one check costs here (unknown users pay it too).

    The bench process swaps in a fast hasher for seeding (on django.conf.settings); the app's own
    first hasher is read from the settings module as written.
    """
    import importlib

    from django.contrib.auth.hashers import import_string

    app_settings = importlib.import_module("bookstore.settings")
    hasher = import_string(app_settings.PASSWORD_HASHERS[0])()
    encoded = hasher.encode("right-password", hasher.salt())
    began = time.process_time()
    hasher.verify("wrong-password", encoded)
    return hasher.algorithm, time.process_time() - began


SHAPE_HISTORY = 5  # runs kept per server shape


def shape_summary(results: dict[str, Any], analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """Keep this run's key figures per server shape; return the kept runs of every shape, this run first.

    Each run appends to bench/results/scenario-shape-<workers>x<threads>.json (the last few runs),
    so runs with BENCH_SCENARIO_THREADS / BENCH_SCENARIO_POOL set leave their figures for the
    default run's report to compare against, and run-to-run variation is visible.
    """
    cfg, br = results["config"], analysis["breaker"]
    phases = {(r["phase"], r["requests"]): r for r in analysis["phases"]}
    mine = {
        "shape": f"{cfg['workers']} x {cfg['threads']}",
        "db_pool_max": cfg["db_pool_max"],
        "finished_at": results["finished_at"],
        "baseline_p99_ms": analysis["legit_p99_ms"]["baseline"],
        "outside_p99_ms": analysis["legit_p99_ms"]["outside_failure"],
        "attack_p99_ms": phases[("attack, before the failure", "all")]["p99_ms"],
        "after_p99_ms": phases[("attack, after recovery", "all")]["p99_ms"],
        "failure_p99_ms": phases[("failure window (fault on until the breaker closes)", "all")]["p99_ms"],
        "open_latency_s": br["open_latency"],
        "reject_decision_p99_ms": br["reject_decision_ms"][99],
        "reject_service_p99_ms": br["reject_server_ms"][99],
        "server_cpu_seconds": results["server_cpu_seconds"],
        "cpu_probe_ms": results["machine"].get("cpu_probe_ms"),
        "db_max_connections": analysis["db_max_connections"],
        "failed": [a["assertion"] for a in analysis["assertions"] if not a["ok"]],
    }
    path = common.RESULTS_DIR / f"{NAME}-shape-{cfg['workers']}x{cfg['threads']}.json"
    kept = [r for r in _shape_runs(path) if r["finished_at"] != mine["finished_at"]]
    path.write_text(json.dumps({"runs": [*kept, mine][-SHAPE_HISTORY:]}, indent=2) + "\n")
    runs = [mine]
    for other in sorted(common.RESULTS_DIR.glob(f"{NAME}-shape-*.json")):
        runs += sorted(
            (r for r in _shape_runs(other) if r is not mine and r["finished_at"] != mine["finished_at"]),
            key=lambda r: r["finished_at"],
            reverse=True,
        )
    return runs


def _shape_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return data.get("runs", [data])


def _shape_reason(runs: list[dict[str, Any]]) -> str:
    """Say whether another shape was measurably better: its runs' range entirely below this shape's."""
    mine = runs[0]["shape"]
    by_shape: dict[str, list[float]] = {}
    for r in runs:
        by_shape.setdefault(r["shape"], []).append(r["outside_p99_ms"])
    text = "; ".join(f"{shape}: {', '.join(f'{v:g}' for v in values)} ms" for shape, values in by_shape.items())
    if len(by_shape) == 1:
        return "- No other shape has been measured on this machine yet."
    better = [shape for shape, values in by_shape.items() if shape != mine and max(values) < min(by_shape[mine])]
    if better:
        return (
            f"- {', '.join(better)} was measurably better than {mine} here (every run below every run of "
            f"{mine}; p99 outside the failure window, {text}): consider it."
        )
    return (
        f"- Why {mine}: no other shape was measurably better for legitimate users: the p99 outside the failure "
        f"window of its runs falls inside the run-to-run range of {mine} ({text}), so the default stays until "
        "one is (more threads a worker: more room while some wait on a password hash or a row lock; fewer: "
        "fewer threads contending for each worker's GIL and fewer PostgreSQL connections)."
    )


def notes(results: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    """Explain the setup choices and, from this run's data, every assertion that failed."""
    cfg = results["config"]
    failed = {a["assertion"] for a in analysis["assertions"] if not a["ok"]}
    hash_name, hash_s = results.get("hasher", "?"), results["hash_seconds"]
    login = cfg["policies"]["ratelimits"]["login-ip"]
    bot = analysis["bot"]
    shapes = shape_summary(results, analysis)
    out = [
        f"- Server size: {cfg['workers']} gthread workers × {cfg['threads']} threads with DB_POOL_MAX="
        f"{cfg['db_pool_max']}, so every thread holds at most one connection and none waits for the pool; the "
        f"ceiling is {cfg['db_ceiling']} connections, below PostgreSQL's max_connections (100). Other shapes "
        "run with `BENCH_SCENARIO_THREADS=N BENCH_SCENARIO_POOL=N BENCH_SCENARIO_MICRO=0 bench/run scenario` and "
        "leave their rows here (each row is one run; the last few of each shape are kept; client-side p99 of "
        "legitimate "
        "requests in ms):",
        "",
        "| workers × threads | DB_POOL_MAX | run | baseline p99 | p99 outside the failure window | attack before "
        "the failure p99 | failure window p99 | after recovery p99 | server CPU s | CPU probe ms | "
        "max DB connections | failed assertions |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {s['shape']}{' (this run)' if n == 0 else ''} | {s['db_pool_max']} | {s['finished_at']} | "
            + " | ".join(
                str(s.get(k, "n/a"))
                for k in (
                    "baseline_p99_ms",
                    "outside_p99_ms",
                    "attack_p99_ms",
                    "failure_p99_ms",
                    "after_p99_ms",
                    "server_cpu_seconds",
                    "cpu_probe_ms",
                    "db_max_connections",
                )
            )
            + f" | {', '.join(s.get('failed', [])) or 'none'} |"
            for n, s in enumerate(shapes)
        ),
        "",
        _shape_reason(shapes),
        "- The scenario runs on its own database and Redis: other benchmarks recreate `bookstore_bench`, and "
        "the connection ceiling check must count this server's connections only.",
        f"- The 1-minute load average was {results['machine']['loadavg_1m_at_start']} when the run started "
        "(it includes this process's seeding of the database just before). The CPU probe (a fixed Python loop, "
        f"best of three, just before the load) took {results['machine'].get('cpu_probe_ms', 'n/a')} ms; on the "
        "project's virtual machines the same loop has taken from 41 to 160 ms (75 to 160 ms within one day on "
        "one machine), and the server's CPU seconds for the same code and load have moved by a quarter between "
        "runs, so compare ratios within one run rather than absolute figures across runs.",
        f"- One password check with the app's hasher ({hash_name}, unknown users included) costs "
        f"{hash_s:.2f} s of CPU here. login-ip ({bot['policy_text']}) let the bot through {bot['admitted']} "
        f"times: the burst at the start of the attack, then one every {login['period'] / login['limit']:g} s; "
        f"admitted attempts took {analysis['bot_admitted_server_ms'][50]} ms server side at the median and "
        f"{analysis['bot_admitted_server_ms'][100]} ms at most (sent at "
        + ", ".join(f"{t:g}" for t in analysis["bot_admitted_sent"])
        + " s). Skipping the hash for unknown user names is not an option: the timing would reveal which "
        "accounts exist.",
    ]
    if "legitimate p99 outside the failure window vs baseline" in failed:
        worst = sorted(analysis["legit_2s_windows"], key=lambda w: -w[3])[:8]
        phases = [r for r in analysis["phases"] if r["requests"] == "all"]
        timeline = cfg["timeline"]
        events = {
            timeline["attack"][0]: "attack starts",
            timeline["fault_on"]: "fault on",
            timeline["fault_off"]: "fault off",
        }
        events.update(dict.fromkeys(timeline["spikes"], "order spike"))

        def labelled(w: list[Any]) -> str:
            near = [name for t, name in sorted(events.items()) if w[0] <= t < w[0] + 2]
            what = f" ({', '.join(near)})" if near else ""
            return f"{w[0]}{what}: {w[1]}, {w[2]} / {w[3]} ms, {w[4]:g} / {w[5]:g} %"

        busy = [w[4] for w in worst]
        out.append(
            "- **Why the p99 assertion fails.** The worst 2 s windows of legitimate latency outside the failure "
            "window (start s, with what was scheduled in it: requests, p50 / p99 ms, CPU busy % / stolen %) are "
            + "; ".join(labelled(w) for w in worst)
            + f". In them the two cores were {min(busy):g}-{max(busy):g}% busy; on average "
            + ", ".join(f"{r['cpu'][0]:g}% in the {r['phase'].split(' (')[0]}" for r in phases[1:])
            + ". Nothing was admitted beyond its budget and nothing failed that should not have (the rows above): "
            "what is left is queueing, each request waiting behind the work admitted with it on two cores "
            "shared by the server, PostgreSQL, Redis and the load generator. Runs of the same code on this "
            "machine land on both sides of the line (the shape table above)."
        )
    if "search breaker opens after the failure starts" in failed:
        lat = analysis["search_latency_after_fault_ms"]
        out.append(
            "- **Why the opening is late.** The breaker opens on the fifth consecutive failed search it records; "
            f"{analysis['searches_after_fault'][0]} searches were sent in the first second after the fault, and a "
            f"search sent in the 2 s after it took {lat[50]} ms (p50) / {lat[99]} ms (p99) from send to answer."
        )
    if "open breaker rejects fast (server side, p99)" in failed:
        br = analysis["breaker"]
        out.append(
            "- **Why the rejection p99 is over 5 ms: waiting, not work.** The refusal's wall time (Server-Timing "
            f"`resilience`) is {br['reject_decision_ms'][50]} ms at the median and {br['reject_decision_ms'][99]} ms "
            f"at p99, but the CPU its thread used meanwhile (`resilience-cpu`) is {br['reject_cpu_ms'][50]} ms at "
            f"the median, {br['reject_cpu_ms'][99]} ms at p99 and {br['reject_cpu_ms'][100]} ms at most: at p99 the "
            "decision's own work, Redis round trip included, is well under 5 ms. The rest is the thread "
            "waiting to run again after the Redis reply: for the worker's GIL (each busy sibling thread may "
            "hold it for the switch interval, 1 ms in deploy/gunicorn.conf.py) and for one of two shared cores "
            "(see the CPU column above). The assertion is left as it is: it measures wall time, and on this "
            "machine under this load the wait dominates."
        )
    return out


def _reload() -> dict[str, Any]:
    """Rebuild the last run's results from bench/results (summary, raw records, access log)."""
    results = json.loads((common.RESULTS_DIR / f"{NAME}.json").read_text())
    results.pop("analysis", None)
    results.pop("notes", None)
    raw = json.loads((common.RESULTS_DIR / f"{NAME}.records.json").read_text())
    results["records"] = [dict(zip(raw["fields"], r, strict=True)) for r in raw["records"]]
    results["samples"] = raw["samples"]
    results["server_timings"] = _access_log(common.RESULTS_DIR / f"{NAME}.access.log")
    return results


def main() -> int:
    """Run the scenario and write the report; with --report, only redraw the report of the last run."""
    from bench import scenario_report

    if "--report" in sys.argv[1:]:
        os.environ["BENCH_SCENARIO_MICRO"] = "0"  # the micro-benchmarks' results of that same run
        results = _reload()
    else:
        results = run_scenario()
        results["hasher"], results["hash_seconds"] = _hash_cost()
    return scenario_report.finish(results, lambda analysis: notes(results, analysis))


if __name__ == "__main__":
    sys.exit(main())
