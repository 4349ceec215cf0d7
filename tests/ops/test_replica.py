"""Catalogue reads from a read replica, read-your-writes for the client that wrote, everything else from the primary.

The replica here is a real PostgreSQL database holding a copy of the primary's rows that never catches
up: whatever a request reads there is visibly not the primary's.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from accounts.models import User
from accounts.services import token_create
from catalog.models import Book
from resilience.models import RateLimitPolicy
from tests.live import LiveServer, database_url, request

PIN_SECONDS = 1.0


@pytest.fixture
def lagging_replica(transactional_db: None) -> Iterator[Callable[[], str]]:
    """Return a function that copies the primary's committed rows to a new database and gives its URL."""
    primary = database_url()
    made: list[str] = []

    def copy() -> str:
        parts = urlsplit(primary)
        name = f"{parts.path.lstrip('/')}_replica"
        admin = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        replica = urlunsplit(parts._replace(path=f"/{name}"))
        dump = subprocess.run(["pg_dump", "--no-owner", primary], capture_output=True, check=True, timeout=60)
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", replica], input=dump.stdout, capture_output=True,
                       check=True, timeout=60)  # fmt: skip
        return replica

    yield copy
    with psycopg.connect(urlunsplit(urlsplit(primary)._replace(path="/postgres")), autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def title(server: LiveServer, book: Book, token: str | None = None) -> str:
    headers = {"Authorization": f"Token {token}"} if token else {}
    reply = request(server.port, f"/api/books/{book.pk}", headers=headers)
    assert reply.status == 200, reply.body
    return str(json.loads(reply.body)["title"])


def send(server: LiveServer, method: str, path: str, token: str, body: dict[str, Any]) -> int:
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    return request(server.port, path, method=method, headers=headers, body=json.dumps(body).encode()).status


def test_catalogue_reads_go_to_the_replica_and_a_writer_reads_its_own_writes(
    lagging_replica: Callable[[], str], make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5, title="Title on both")
    staff = token_create(user=make_user(role=User.Role.STAFF)).token
    customer = token_create(user=make_user()).token
    replica = lagging_replica()
    with psycopg.connect(replica, autocommit=True) as conn:  # a change the replica has, the primary not
        conn.execute("UPDATE catalog_book SET title = 'Only on the replica' WHERE id = %s", [book.pk])
    server = LiveServer(
        workers=2, env_overrides={"DATABASE_REPLICA_URL": replica, "REPLICA_PIN_SECONDS": str(PIN_SECONDS)}
    ).start()
    try:
        assert title(server, book) == "Only on the replica"
        assert title(server, book, staff) == "Only on the replica"  # no write yet: the replica serves it too

        assert send(server, "PATCH", f"/api/books/{book.pk}", staff, {"title": "Edited by staff"}) == 200
        assert title(server, book, staff) == "Edited by staff"  # its own write, on whichever worker
        assert title(server, book, staff) == "Edited by staff"
        assert title(server, book) == "Only on the replica"  # others read the replica, which lags
        time.sleep(PIN_SECONDS + 0.2)
        assert title(server, book, staff) == "Only on the replica"  # the pin is over

        # An order locks and decrements the primary's row: the replica's stock never counts.
        assert send(server, "POST", "/api/orders", customer, {"lines": [{"book_id": book.pk, "quantity": 5}]}) == 201
        assert send(server, "POST", "/api/orders", customer, {"lines": [{"book_id": book.pk, "quantity": 1}]}) == 409

        # Policies come from the primary: one created there only is enforced at once.
        RateLimitPolicy.objects.create(
            name="replica-test", match_type="regex", pattern=f"^/api/books/{book.pk}$", key="ip", limit=1, period=60
        )
        statuses = []
        deadline = time.monotonic() + 2
        while 429 not in statuses and time.monotonic() < deadline:
            statuses.append(request(server.port, f"/api/books/{book.pk}").status)
        assert 429 in statuses
    finally:
        server.stop()

    book.refresh_from_db()
    assert (book.stock, book.title) == (0, "Edited by staff")
    with psycopg.connect(replica) as conn:
        row = conn.execute("SELECT stock, title FROM catalog_book WHERE id = %s", [book.pk]).fetchone()
    assert row == (5, "Only on the replica")
