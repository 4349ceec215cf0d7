"""reads: server CPU per request of list, detail, search and order placement (docs/benchmarks.md.in)."""

from __future__ import annotations

import json

from bench import lib

NAME = "reads"


def main() -> int:
    cfg = lib.knobs(duration=5.0, warmup=1.0, clients=8, workers=2, threads=4)
    with lib.prepared(NAME) as (_, redis):
        from django.core.management import call_command

        from catalog.models import Book
        from resilience.models import RateLimitPolicy

        call_command("demo_data", books=2000, seed=11, verbosity=0)
        Book.objects.update(stock=10**6)
        ids = list(Book.objects.order_by("pk").values_list("pk", flat=True)[:200])
        json_ = {"Accept": "application/json", "Content-Type": "application/json"}
        auth = [{**json_, "Authorization": f"Token {t}"} for t in lib.customers(16)]
        RateLimitPolicy.objects.update(mode=RateLimitPolicy.Mode.DRY_RUN)
        machine = lib.machine(redis)
        mixes = {
            "book list": [("GET", f"/api/books?page={n}&page_size=20", json_, "") for n in range(1, 51)],
            "book detail": [("GET", f"/api/books/{pk}", json_, "") for pk in ids],
            "search": [("GET", f"/api/books/search?q={w}", json_, "") for w in lib.WORDS.split()[:12]],
            "order placement": [("POST", "/api/orders", auth[n % 16],
                                 json.dumps({"lines": [{"book_id": pk, "quantity": 1}]})) for n, pk in enumerate(ids)],
        }  # fmt: skip
        with lib.server(workers=cfg["workers"], threads=cfg["threads"]) as server:
            runs = {label: lib.wrk_round(server, redis, mix, cfg) for label, mix in mixes.items()}
        with lib.server(workers=cfg["workers"], threads=cfg["threads"], CATALOGUE_PAGE_CACHE_BYTES="0") as server:
            for label in ("book list", "book detail"):
                runs[f"{label}, every page rendered"] = lib.wrk_round(server, redis, mixes[label], cfg)

    fields = ("cpu_ms", "per_second", "p50_ms", "p99_ms", "redis_rt", "requests")
    bad = {k: r["bad_status"] + r["socket_errors"] for k, r in runs.items()}
    columns = ["request", "server CPU ms/req", "req/s", "p50 ms", "p99 ms", "Redis RT/req", "requests"]
    rows = [[k, *(r[f] for f in fields)] for k, r in runs.items()]
    checks = [lib.check("no error status, no socket errors", not any(bad.values()), bad, "0 each")]
    return lib.finish(NAME, machine=machine, config=cfg, columns=columns, rows=rows, runs=runs, checks=checks)
