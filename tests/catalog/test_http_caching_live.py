"""Book page validators over real HTTP, on gunicorn with two workers: whichever answers confirms a current copy,
and none confirms a copy an order made stale (the version is in the database, not in a worker)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from accounts.models import User
from accounts.services import token_create
from catalog.models import Book
from tests.live import LiveServer, Reply, request

pytestmark = pytest.mark.live


def _order_two(server: LiveServer, token: str, book: Book) -> Reply:
    """Place an order of two copies of the book through the server."""
    order = {"lines": [{"book_id": book.pk, "quantity": 2}]}
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    return request(server.port, "/api/orders", method="POST", headers=headers, body=json.dumps(order).encode())


def test_every_worker_confirms_a_current_copy_and_none_a_copy_an_order_made_stale(
    transactional_db: None, customer: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River", stock=5)
    url, token = f"/api/books/{book.pk}", token_create(user=customer).token
    with LiveServer(workers=2, threads=2) as server:
        first = request(server.port, url)
        assert first.status == 200
        assert {d.strip() for d in first.header("Cache-Control").split(",")} == {"public", "max-age=5"}
        etag = first.header("ETag")

        again = [request(server.port, url, headers={"If-None-Match": etag}) for _ in range(8)]
        assert [r.status for r in again] == [304] * 8
        assert all(r.body == b"" and r.header("ETag") == etag for r in again)

        assert _order_two(server, token, book).status == 201

        after = [request(server.port, url, headers={"If-None-Match": etag}) for _ in range(8)]
        assert [r.status for r in after] == [200] * 8
        assert {json.loads(r.body)["stock"] for r in after} == {3}
        assert len({r.header("ETag") for r in after}) == 1
        assert after[0].header("ETag") != etag


def test_no_worker_answers_from_a_copy_it_kept_before_an_order(
    transactional_db: None, customer: User, make_book: Callable[..., Book]
) -> None:
    """Plain GETs, no validators: each worker keeps the page, and the order's new version retires every copy."""
    book = make_book(title="The River", stock=5)
    url, token = f"/api/books/{book.pk}", token_create(user=customer).token
    with LiveServer(workers=2, threads=2) as server:
        before = [request(server.port, url) for _ in range(12)]
        assert {json.loads(r.body)["stock"] for r in before} == {5}
        assert len({r.body for r in before}) == 1

        assert _order_two(server, token, book).status == 201

        after = [request(server.port, url) for _ in range(12)]
        assert {json.loads(r.body)["stock"] for r in after} == {3}
        metrics = request(server.port, "/metrics").body.decode().splitlines()
        kept = next(line for line in metrics if line.startswith('bookstore_catalogue_pages_total{body="kept"}'))
        assert float(kept.split()[-1]) >= 24 - 2 * 2  # each worker renders at most once per version
