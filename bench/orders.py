"""orders: orders per second on one hot book: the API, a bare view and pgbench (docs/benchmarks.md.in)."""

from __future__ import annotations

import json
import re
import subprocess
from decimal import Decimal

from bench import lib

NAME = "orders"
# The least an order needs on the row, as a pgbench script: BEGIN; lock; decrement; COMMIT.
SQL = """BEGIN;
SELECT stock FROM catalog_book WHERE id = :id FOR UPDATE;
UPDATE catalog_book SET stock = stock - 1 WHERE id = :id;
END;"""


def main() -> int:
    cfg = lib.knobs(orders=2000, clients=32, warmup=1.0, workers=2, threads=4)
    with lib.prepared(NAME) as (url, redis):
        from catalog.models import Book
        from catalog.services import book_create
        from orders.models import Order
        from resilience.models import RateLimitPolicy

        book = book_create(isbn="9790000000018", title="Hot", price=Decimal("12.50"), stock=10**9, authors=["B"])
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        auth = [{**headers, "Authorization": f"Token {t}"} for t in lib.customers(cfg["clients"])]
        RateLimitPolicy.objects.update(enabled=False)
        machine = lib.machine(redis)
        body, runs = json.dumps({"lines": [{"book_id": book.pk, "quantity": 1}]}), {}
        with lib.server(workers=cfg["workers"], threads=cfg["threads"]) as server:
            for label, path in {"app": "/api/orders", "minimal": f"/bench/order/{book.pk}"}.items():
                clients = [{"method": "POST", "path": path, "body": body, "headers": h} for h in auth]
                with lib.spent(server, redis) as spent:
                    r = lib.load(server, clients, warmup=cfg["warmup"], count=cfg["orders"])
                runs[label] = {**r, **lib.per_request(spent, r["sent"])}
        # SQL about as many times (a whole number per connection) on as many connections, by pgbench.
        per_client = -(-cfg["orders"] // cfg["clients"])
        cmd = ["pgbench", "-n", f"-c{cfg['clients']}", "-j2", f"-t{per_client}", "-D", f"id={book.pk}", "-f-", url]
        proc = subprocess.run(cmd, input=SQL, capture_output=True, text=True, check=False)
        found = [re.search(rf"{k}\D*([\d.]+)", proc.stdout) for k in ("processed", "failed", "latency average", "tps")]
        n, failed, mean, tps = (float(m[1]) if m else 0.0 for m in found)
        errors = [proc.stderr.strip()] if proc.returncode or failed else []
        runs["SQL"] = {"count": int(n), "per_second": round(tps, 1), "mean_ms": mean, "errors": errors}
        stock_drop, orders = 10**9 - Book.objects.get(pk=book.pk).stock, Order.objects.count()

    app, minimal, sql = runs["app"], runs["minimal"], runs["SQL"]
    created, done = app["statuses"].get("201", 0), minimal["statuses"].get("200", 0)
    fields = ("per_second", "mean_ms", "p50_ms", "p99_ms", "count", "cpu_ms", "redis_rt")
    rows = [[k, *(r.get(x, "") for x in fields)] for k, r in runs.items()]
    figures = [
        ["orders/s app / minimal view", lib.ratio(app["per_second"], minimal["per_second"])],
        ["orders/s app / bare SQL", lib.ratio(app["per_second"], sql["per_second"])],
        ["client CPU (bench/client.py) for the app's orders", f"{app['cpu_seconds']} s over {app['wall_seconds']} s"],
    ]
    drop = f"-{stock_drop}: {created} + {done} + {sql['count']}" + (f" {sql['errors']}" if sql["errors"] else "")
    checks = [
        *(lib.check(f"{label}: every answer {s}", set(r["statuses"]) == {s} and not r["errors"],
                    f"{r['statuses']} {r['errors'] or ''}".strip(), f"{s} only")
          for label, r, s in (("app", app, "201"), ("minimal view", minimal, "200"))),
        lib.check("stock dropped by exactly the orders acknowledged", stock_drop == created + done + sql["count"] and
                  not sql["errors"], drop, "201s + 200s + SQL commits"),
        lib.check("one order written per 201", orders == created, orders, created),
    ]  # fmt: skip
    columns = ["path", "orders/s", "mean ms", "p50 ms", "p99 ms", "measured", "CPU ms/order", "Redis RT/order"]
    return lib.finish(NAME, machine=machine, config={**cfg, "statements": " ".join(SQL.split())}, columns=columns,
                      rows=rows, figures=figures, runs=runs, checks=checks)  # fmt: skip
