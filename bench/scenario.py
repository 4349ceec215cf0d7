"""Under attack: legitimate customers keep being served while crawlers, bots, spikes and a failing dependency hit.

One command (`bench/run scenario`), loopback only, about four minutes with the micro-benchmarks:

1. Seed the scenario database: a 2,000-book demo catalogue, three hot books with known stock,
   400 customers with tokens, the staff account (fast hasher in this process only).
2. Start gunicorn (4 gthread workers, DB_POOL_MAX per worker set explicitly) with the DEFAULT
   policies of the data migrations, FAULT_INJECTION=true and TRUSTED_PROXY_COUNT=1, so that the
   load generator presents one client address per simulated client in X-Forwarded-For, as a proxy
   would. gunicorn writes an access log with each request's id and service time (server side).
3. Run bench/scenario_load.py (one asyncio process) through the phases: baseline (legitimate users
   only), attack (legitimate users plus a crawler, a credential-stuffing bot, two order spikes, and
   30 s in the middle when the search dependency fails, switched by staff through the ops API),
   cool-down. Meanwhile this process samples PostgreSQL's connection count every 250 ms.
4. Check the invariants in the database (every 201 order exists, stock is conserved per book),
   evaluate the assertions, draw the charts, rerun the micro-benchmarks of bench/run and write
   docs/benchmarks.md (bench/scenario_report.py).

The scenario uses its own database (bookstore_bench_scenario) and a private redis-server: the
micro-benchmarks drop and recreate bookstore_bench, and the connection-count check must see this
server's connections only. Knobs: BENCH_SCENARIO_MICRO=0 reuses the micro-benchmarks' last
bench/results/*.json instead of rerunning them; BENCH_SCENARIO_THREADS (4) and
BENCH_SCENARIO_POOL (4) set gunicorn threads and DB_POOL_MAX per worker.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import platform
import re
import shlex
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
BOOKS = 2000
CUSTOMERS = 400
HOT_BOOKS = 3
HOT_STOCK = 120  # per hot book: the first spike sells most of it, the second finds it sold out
SPIKE_CUSTOMERS = 150

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


def _seed() -> dict[str, Any]:
    """Create the catalogue, hot books, customers and staff; return what the load generator needs."""
    from django.core.management import call_command

    from accounts.models import User
    from accounts.services import token_for, user_create
    from catalog.models import Book

    call_command("demo_data", books=BOOKS, seed=11, stdout=io.StringIO())
    book_ids = list(Book.objects.order_by("pk").values_list("pk", flat=True))
    hot_ids = book_ids[10 : 10 + HOT_BOOKS]
    Book.objects.filter(pk__in=hot_ids).update(stock=HOT_STOCK)
    in_stock_ids = list(Book.objects.filter(stock__gte=10).exclude(pk__in=hot_ids).values_list("pk", flat=True))
    tokens = [
        token_for(user=user_create(username=f"customer{n}", email=f"customer{n}@bench.invalid", password="unused-pw"))
        for n in range(CUSTOMERS)
    ]
    staff = User.objects.get(username="staff")
    return {
        "book_ids": book_ids,
        "hot_ids": hot_ids,
        "in_stock_ids": in_stock_ids,
        "tokens": tokens,
        "staff_token": token_for(user=staff),
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


class ConnectionSampler(threading.Thread):
    """Count the scenario database's PostgreSQL connections every 250 ms, from the `postgres` database."""

    def __init__(self, t0: float) -> None:
        super().__init__(daemon=True)
        self.t0 = t0
        self.samples: list[list[float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(f"{common.PG_SERVER_URL}postgres", autocommit=True) as conn:
            n = 0
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
                self.samples.append([round(time.monotonic() - self.t0, 3), row[0], row[1]])


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
        "python": platform.python_version(),
        "django": django.get_version(),
        "postgresql": (row[0] if row else "?").split()[0],
        "redis": redis_version,
        "gunicorn": gunicorn.__version__,
        "platform": platform.platform(terse=True),
    }


# --- The run -----------------------------------------------------------------------------------


def run_scenario() -> dict[str, Any]:
    threads = int(common.env_number("BENCH_SCENARIO_THREADS", 8))
    pool_max = int(common.env_number("BENCH_SCENARIO_POOL", 8))
    with RedisServer() as redis_server:
        _setup_django(redis_server.url)
        t_seed = time.monotonic()
        seed = _seed()
        seed_seconds = time.monotonic() - t_seed
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
                ["--access-logfile", str(access_log), "--access-logformat", ACCESS_LOG_FORMAT]
            ),
        )
        customers = [[token, _address(1, n)] for n, token in enumerate(seed["tokens"])]
        spike_customers = [
            [[seed["tokens"][(s * 97 + n) % CUSTOMERS], _address(2 + s, n)] for n in range(SPIKE_CUSTOMERS)]
            for s in range(len(TIMELINE["spikes"]))
        ]
        output = common.RESULTS_DIR / f"{NAME}.records.json"
        log = common.RESULTS_DIR / f"{NAME}.gunicorn.log"
        with common.gunicorn(workers=WORKERS, threads=threads, env=env, log=log) as server:
            cpu_before = common.server_cpu_seconds(server)
            redis_cpu_before = _redis_cpu(redis_client)
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
            metrics = _metrics(server)
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


def _hash_seconds() -> float:
    """Return how long one password check with Django's default hasher takes here (unknown users pay it too)."""
    import hashlib

    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    began = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"wrong-password", b"salt-salt-salt-salt", PBKDF2PasswordHasher.iterations)
    return time.perf_counter() - began


def notes(results: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    """Explain the setup choices and, from this run's data, every assertion that failed."""
    cfg, tl = results["config"], results["config"]["timeline"]
    failed = {a["assertion"] for a in analysis["assertions"] if not a["ok"]}
    hash_s = results["hash_seconds"]
    out = [
        f"- Server size: {cfg['workers']} gthread workers × {cfg['threads']} threads with DB_POOL_MAX="
        f"{cfg['db_pool_max']}, so every thread holds at most one connection and none waits for the pool; the "
        f"ceiling is {cfg['db_ceiling']} connections, below PostgreSQL's max_connections (100). With 4 threads a "
        "worker, the 20 password hashes the bot is allowed at the start of the attack occupy every thread of "
        "the server for seconds and everything else queues behind them.",
        "- The scenario runs on its own database and Redis: other benchmarks recreate `bookstore_bench`, and "
        "the connection ceiling check must count this server's connections only.",
        f"- The machine is shared: the 1-minute load average was {results['machine']['loadavg_1m_at_start']} "
        "when the run started, so other work competed for the same two cores during parts of it.",
        f"- One password check with Django's default hasher (PBKDF2, unknown users included) costs "
        f"{hash_s:.2f} s of CPU here: login-ip's 20 admitted attempts are {20 * hash_s:.0f} CPU-seconds, "
        f"{10 * hash_s:.1f} s of both cores. The bot's admitted attempts took {analysis['bot_admitted_server_ms'][50]} "
        f"ms server side at the median and {analysis['bot_admitted_server_ms'][100]} ms at most, between "
        f"{analysis['bot_admitted_span'][0]} s and {analysis['bot_admitted_span'][1]} s.",
    ]
    worst = sorted(analysis["legit_2s_windows"], key=lambda w: -w[3])[:6]
    spikes = [(at, at + tl["spike_seconds"]) for at in tl["spikes"]]

    def what(lo: float) -> str:
        tags = []
        if analysis["bot_admitted_span"][0] - 2 <= lo <= analysis["bot_admitted_span"][1] + 10:
            tags.append("the bot's admitted password hashes and the backlog behind them")
        if any(a - 2 <= lo <= b + 4 for a, b in spikes):
            tags.append("an order spike")
        return " and ".join(tags) or "no scheduled event"

    if "legitimate p99 outside the failure window vs baseline" in failed:
        out.append(
            "- **Why the p99 assertion fails.** The worst 2 s windows of legitimate latency (start s: count, "
            "p50 / p99 ms) are "
            + "; ".join(f"{w[0]}: {w[1]}, {w[2]} / {w[3]} ({what(w[0])})" for w in worst)
            + ". The crawler's 200 refusals a second are absorbed (compare the windows in the middle of the "
            "attack with the baseline). What is not absorbed on two cores is the work the default policies "
            "admit by design: the 20 login attempts of one address arrive within a second and cost "
            f"{20 * hash_s:.0f} CPU-seconds of hashing, and 150 orders within 2 s serialise on a few hot rows. "
            "Requests queue behind both and the backlog takes seconds to drain. The limits hold (see the budget "
            "rows); the latency goal needs either more cores than two or a login policy that spreads the "
            "attempts (a token bucket with a small burst, for example 20 per 10 minutes with a burst of 2). "
            "Skipping the hash for unknown user names is not an option: the timing would reveal which "
            "accounts exist."
        )
    if "search breaker opens after the failure starts" in failed:
        lat = analysis["search_latency_after_fault_ms"]
        out.append(
            "- **Why the opening is late.** The breaker opens on the fifth failed search it records, and a search "
            f"started in the 2 s after the fault took {lat[50]} ms (p50) / {lat[99]} ms (p99) from send to answer, "
            "queueing included: the opening waits for those searches to be served and to fail."
        )
    if "open breaker rejects fast (server side, p99)" in failed:
        br = analysis["breaker"]
        out.append(
            "- **Why the rejection p99 is over 5 ms.** gunicorn's service time of a rejection is "
            f"{br['reject_server_ms'][50]} ms at the median but {br['reject_server_ms'][99]} ms at p99: it counts "
            "the time the thread waits for the GIL and for a CPU while other threads of the same worker render "
            "pages, not only the rejection's own work. The micro-benchmark below measures the open breaker "
            "alone (server CPU per rejection)."
        )
    return out


def main() -> int:
    from bench import scenario_report

    results = run_scenario()
    results["hash_seconds"] = _hash_seconds()
    return scenario_report.finish(results, lambda analysis: notes(results, analysis))


if __name__ == "__main__":
    sys.exit(main())
