"""The app through a real PgBouncer in transaction mode: it connects, its statement timeout holds, orders stay exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from accounts.models import User
from accounts.services import token_create
from catalog.models import Book
from tests.live import ROOT, LiveServer, PgBouncer, database_url, request

# Runs in a process of its own with the app's settings, as a worker would: one query, then one that
# outlives the statement timeout. Prints what happened as JSON.
PROBE = """
import json, time, django
django.setup()
from django.db import connection, OperationalError
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
began = time.perf_counter()
try:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(3)")
    outcome = "finished"
except OperationalError as e:
    outcome = type(e.__cause__).__name__
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - began}))
"""


@pytest.fixture
def pgbouncer(transactional_db: None) -> Iterator[Callable[..., PgBouncer]]:
    started: list[PgBouncer] = []

    def start(**kwargs: Any) -> PgBouncer:
        started.append(PgBouncer(**kwargs).start())
        return started[-1]

    yield start
    for bouncer in started:
        bouncer.close()


def probe(bouncer: PgBouncer, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    environment.update(
        DJANGO_SETTINGS_MODULE="bookstore.settings",
        DATABASE_URL=bouncer.url(database_url()),
        SECRET_KEY="pgbouncer-test-secret-key",
        DB_STATEMENT_TIMEOUT_MS="300",
        LOG_LEVEL="WARNING",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def test_the_app_connects_through_transaction_pooling_and_its_statement_timeout_holds(
    pgbouncer: Callable[..., PgBouncer],
) -> None:
    bouncer = pgbouncer(connect_query="SET statement_timeout = 300")

    ran = probe(bouncer, DB_TRANSACTION_POOLING="true")

    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "QueryCanceled"  # cut at 300 ms, not after the 3 s the query asked for
    assert result["seconds"] < 2
    assert "statement_timeout_mismatch" not in ran.stdout + ran.stderr


def test_without_transaction_pooling_set_pgbouncer_refuses_the_startup_options(
    pgbouncer: Callable[..., PgBouncer],
) -> None:
    # What an operator who forgets the setting sees: a clear refusal, not a silently dropped timeout.
    bouncer = pgbouncer(connect_query="SET statement_timeout = 300")

    ran = probe(bouncer)

    assert ran.returncode != 0
    assert "unsupported startup parameter" in bouncer.log()


def test_a_pooler_that_does_not_apply_the_timeout_is_reported(pgbouncer: Callable[..., PgBouncer]) -> None:
    bouncer = pgbouncer()  # no connect_query, a role without a timeout: queries would run forever

    ran = probe(bouncer, DB_TRANSACTION_POOLING="true")

    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.strip().splitlines()[-1])["outcome"] == "finished"
    logged = (ran.stdout + ran.stderr).splitlines()
    errors = [json.loads(line) for line in logged if "statement_timeout_mismatch" in line]
    assert len(errors) == 1
    assert (errors[0]["in_force_ms"], errors[0]["configured_ms"]) == (0, 300)


def test_orders_through_pgbouncer_are_exact_under_concurrency(
    pgbouncer: Callable[..., PgBouncer],
    make_user: Callable[..., User],
    make_book: Callable[..., Book],
) -> None:
    # Two server connections for two workers of four threads: transactions take turns on them.
    bouncer = pgbouncer(pool_size=2, connect_query="SET statement_timeout = 15000")
    book = make_book(stock=40)
    tokens = [token_create(user=make_user()).token for _ in range(8)]
    server = LiveServer(
        workers=2,
        threads=4,
        env_overrides={
            "DATABASE_URL": bouncer.url(database_url()),
            "DB_TRANSACTION_POOLING": "true",
            "DB_STATEMENT_TIMEOUT_MS": "15000",
        },
    ).start()
    try:
        body = json.dumps({"lines": [{"book_id": book.pk, "quantity": 1}]}).encode()

        def order(n: int) -> int:
            headers = {"Authorization": f"Token {tokens[n % 8]}", "Content-Type": "application/json"}
            return request(server.port, "/api/orders", method="POST", headers=headers, body=body).status

        def read(n: int) -> int:
            return request(server.port, f"/api/books/{book.pk}" if n % 2 else "/api/books?page=1").status

        with ThreadPoolExecutor(16) as pool:
            orders = pool.map(order, range(60))
            reads = pool.map(read, range(60))
            orders, reads = list(orders), list(reads)
    finally:
        server.stop()

    assert sorted(set(orders)) == [201, 409]
    assert orders.count(201) == 40  # every copy sold once, none oversold
    assert set(reads) == {200}
    book.refresh_from_db()
    assert book.stock == 0
