"""Orders per second on one hot book, through the app and as bare SQL, in the same run.

1. App: CLIENTS customers (one token and one keep-alive connection each) POST /api/orders for
   one copy of the same book to gunicorn, from a separate load-generator process.
2. Ceiling: the same number of psycopg connections (threads) run the transaction every order
   needs at minimum on that row: BEGIN; SELECT ... FOR UPDATE; UPDATE stock; COMMIT.

Every order serialises on the book's row lock, so the ratio app / bare SQL says how much of the
lock-bound ceiling the app reaches. Afterwards every response must be 201 and the stock must have
dropped by exactly the number of 201s. Knobs: BENCH_DURATION (s, default 10), BENCH_WARMUP (2),
BENCH_CLIENTS (32), BENCH_WORKERS (2), BENCH_THREADS (4).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bench import common

NAME = "orders"
HOT_STOCK = 10**9  # never runs out: ~2,000 orders/s for 12 s is 24,000 copies

CEILING_SQL = (
    "BEGIN",
    "SELECT stock FROM catalog_book WHERE id = %(id)s FOR UPDATE",
    "UPDATE catalog_book SET stock = stock - 1 WHERE id = %(id)s",
    "COMMIT",
)


def _isbn13(n: int) -> str:
    body = f"979{n:09d}"
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


def _prepare(clients: int) -> tuple[int, list[str]]:
    """Create the hot book and the customers through the services; return the book id and tokens."""
    from accounts.services import token_create, user_create
    from catalog.services import book_create
    from resilience.models import RateLimitPolicy
    from resilience.services import policy_update

    book = book_create(
        isbn=_isbn13(1), title="Bench hot book", price=Decimal("12.50"), stock=HOT_STOCK, authors=["Bench"]
    )
    tokens = [
        token_create(
            user=user_create(username=f"bench{n}", email=f"bench{n}@bench.invalid", password="bench-password-unused")
        ).token
        for n in range(clients)
    ]
    # Every client comes from 127.0.0.1, so the default orders-ip policy (100/minute) would refuse
    # almost everything. Dry run keeps the limiter's full per-request work (the Redis round trip
    # and counting) in the measurement without refusing anyone.
    policy_update(policies=RateLimitPolicy.objects.all(), mode=RateLimitPolicy.Mode.DRY_RUN)
    return book.pk, tokens


def _stock_and_orders(book_id: int) -> tuple[int, int, int]:
    from catalog.models import Book
    from orders.models import Order, OrderLine

    stock = Book.objects.values_list("stock", flat=True).get(pk=book_id)
    return stock, Order.objects.count(), OrderLine.objects.filter(book_id=book_id).count()


def run_app(book_id: int, tokens: list[str], *, warmup: float, duration: float) -> dict[str, Any]:
    """Run the app under gunicorn and the load generator; return the figures and the checks."""
    # One process per core, four threads each: enough requests in flight to cover the waits on
    # the row lock, PostgreSQL and Redis, few enough that the thread holding the row lock is not
    # queued for the GIL behind threads parsing or rendering (which lengthens every lock hold).
    # 4 x 8 would put all 32 clients inside the server at once on 2 cores.
    workers = int(common.env_number("BENCH_WORKERS", 2))
    threads = int(common.env_number("BENCH_THREADS", 4))
    stock_before, orders_before, _ = _stock_and_orders(book_id)
    common.close_django_connections()
    common.vacuum("catalog_book")

    body = json.dumps({"lines": [{"book_id": book_id, "quantity": 1}]})
    requests = [
        common.Request(
            "POST",
            "/api/orders",
            {"Authorization": f"Token {token}", "Content-Type": "application/json", "Accept": "application/json"},
            body,
        )
        for token in tokens
    ]
    # Each thread holds at most one connection; the pool never makes a thread wait.
    env = common.bench_env(DB_POOL_MIN=str(threads), DB_POOL_MAX=str(threads))
    log = common.RESULTS_DIR / f"{NAME}.gunicorn.log"
    with common.gunicorn(workers=workers, threads=threads, env=env, log=log) as server:
        cpu_before = common.server_cpu_seconds(server)
        load = common.run_load(
            server, requests, warmup=warmup, duration=duration, max_requests=int(5000 * (warmup + duration))
        )
        server_cpu = common.server_cpu_seconds(server) - cpu_before

    stock_after, orders_after, _ = _stock_and_orders(book_id)
    created = load["statuses"].get("201", 0)
    checks = {
        "responses": load["completed"],
        "all_201": created == load["sent"] == load["completed"] and not load["errors"],
        "stock_decrease": stock_before - stock_after,
        "stock_matches_201s": stock_before - stock_after == created,
        "orders_written": orders_after - orders_before,
        "orders_match_201s": orders_after - orders_before == created,
    }
    return {
        "server": {
            "command": f"gunicorn bookstore.wsgi -w {workers} --worker-class "
            f"{'gthread' if threads > 1 else 'sync'} --threads {threads} --preload",
            "workers": workers,
            "threads": threads,
        },
        "load": load,
        # Load on the shared machine moves the throughput; CPU per request hardly moves.
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(load["completed"], 1), 2),
        "per_second": load["measured"]["per_second"],
        "p50_ms": load["measured"]["p50_ms"],
        "p99_ms": load["measured"]["p99_ms"],
        "count": load["measured"]["count"],
        "checks": checks,
        "ok": checks["all_201"] and checks["stock_matches_201s"] and checks["orders_match_201s"],
    }


def run_bare_sql(book_id: int, *, clients: int, warmup: float, duration: float) -> dict[str, Any]:
    """Run the minimal hot-row transaction on `clients` psycopg connections, one thread each."""
    import psycopg

    common.vacuum("catalog_book")
    with psycopg.connect(common.DATABASE_URL) as conn:
        stock_before = conn.execute("SELECT stock FROM catalog_book WHERE id = %s", (book_id,)).fetchone()[0]

    conns = [psycopg.connect(common.DATABASE_URL, autocommit=True) for _ in range(clients)]
    window: list[float] = []  # [start, end], set once every thread is connected and waiting
    ready = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    committed = [0] * clients
    errors: list[str] = []
    params = {"id": book_id}

    def client(i: int) -> None:
        conn, mine = conns[i], latencies[i]
        ready.wait()
        start, end = window
        try:
            while (began := time.perf_counter()) < end:
                for sql in CEILING_SQL:
                    conn.execute(sql, params)
                committed[i] += 1
                done = time.perf_counter()
                if done >= start and done < end:
                    mine.append(done - began)
        except psycopg.Error as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    try:
        for t in threads:
            t.start()
        now = time.perf_counter()
        window.extend([now + warmup, now + warmup + duration])
        ready.wait()
        for t in threads:
            t.join()
    finally:
        for conn in conns:
            conn.close()

    with psycopg.connect(common.DATABASE_URL) as conn:
        stock_after = conn.execute("SELECT stock FROM catalog_book WHERE id = %s", (book_id,)).fetchone()[0]
    all_latencies = sorted(x for mine in latencies for x in mine)
    checks = {
        "committed": sum(committed),
        "stock_decrease": stock_before - stock_after,
        "stock_matches_commits": stock_before - stock_after == sum(committed),
        "errors": errors[:5],
    }
    return {
        "statements": list(CEILING_SQL),
        "per_second": round(len(all_latencies) / duration, 1),
        "p50_ms": round(common.percentile(all_latencies, 50) * 1000, 2),
        "p99_ms": round(common.percentile(all_latencies, 99) * 1000, 2),
        "count": len(all_latencies),
        "checks": checks,
        "ok": not errors and checks["stock_matches_commits"],
    }


def _report(results: dict[str, Any]) -> str:
    m, cfg, app, sql = results["machine"], results["config"], results["app"], results["bare_sql"]
    checks = app["checks"]
    rows = [
        ("app: POST /api/orders", app),
        ("bare SQL transaction", sql),
    ]
    lines = [
        f"orders: {cfg['clients']} clients on one hot book, {cfg['warmup_s']:g} s warm-up + "
        f"{cfg['duration_s']:g} s measured",
        f"machine: nproc {m['nproc']}, Python {m['python']}, PostgreSQL {m['postgresql']} "
        f"(synchronous_commit={m['synchronous_commit']}), gunicorn {m['gunicorn']}",
        f"server: {app['server']['command']}",
        "",
        f"{'':24} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8} {'count':>8}",
    ]
    lines += [
        f"{label:24} {r['per_second']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['count']:>8}"
        for label, r in rows
    ]
    lines += [
        f"{'ratio app / bare SQL':24} {results['ratio']:>9.3f}",
        "",
        f"app checks: {checks['responses']} responses {app['load']['statuses']}"
        f"{' errors ' + str(app['load']['errors']) if app['load']['errors'] else ''}; "
        f"stock -{checks['stock_decrease']}, orders +{checks['orders_written']} -> "
        f"{'OK' if app['ok'] else 'FAILED'}",
        f"bare SQL checks: {sql['checks']['committed']} commits, stock -{sql['checks']['stock_decrease']}"
        f" -> {'OK' if sql['ok'] else 'FAILED ' + '; '.join(sql['checks']['errors'])}",
        f"app server CPU: {app['server_cpu_ms_per_request']:.2f} ms per request; load generator: "
        f"{app['load']['cpu_seconds']:.1f} s CPU over {app['load']['wall_seconds']:.1f} s",
    ]
    if m["loadavg_1m_at_start"] > m["nproc"] / 2:
        lines.append(
            f"note: load average {m['loadavg_1m_at_start']} at start on {m['nproc']} CPUs; "
            "other work shares the machine, so the absolute figures are noisy"
        )
    return "\n".join(lines)


def main() -> int:
    warmup = common.env_number("BENCH_WARMUP", 2.0)
    duration = common.env_number("BENCH_DURATION", 10.0)
    clients = int(common.env_number("BENCH_CLIENTS", 32))

    common.setup_django()
    book_id, tokens = _prepare(clients)
    machine = common.machine()
    app = run_app(book_id, tokens, warmup=warmup, duration=duration)
    sql = run_bare_sql(book_id, clients=clients, warmup=warmup, duration=duration)

    results = {
        "benchmark": NAME,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": {"clients": clients, "warmup_s": warmup, "duration_s": duration, "hot_stock": HOT_STOCK},
        "app": app,
        "bare_sql": sql,
        "ratio": round(app["per_second"] / sql["per_second"], 4) if sql["per_second"] else 0.0,
        "ok": app["ok"] and sql["ok"],
    }
    print(_report(results))
    path = common.write_results(NAME, results)
    print(f"results: {path.relative_to(common.ROOT)}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
