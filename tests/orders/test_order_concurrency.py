"""Orders under real concurrency: PostgreSQL row locks, separate connections, overlapping requests.

Each test starts real threads; every thread has its own database connection (closed when the
thread ends) and a Barrier releases them together so the requests really overlap.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from django.db import connection, transaction
from django.db.models import Sum
from django.http import HttpResponse
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Book
from orders.models import MAX_ORDER_TOTAL, Order, OrderLine
from orders.services import LineRequest, order_place
from tests.conftest import client_for

T = TypeVar("T")

ORDERS = "/api/orders"
PROBLEM = "application/problem+json"
# Seconds a thread waits for the others at the barrier, and the test for a thread to finish.
BARRIER_TIMEOUT = 30
JOIN_TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("transactional_db")


def _together(calls: list[Callable[[threading.Barrier], T]]) -> list[T]:
    """Run each call on its own thread, sharing one Barrier; return the results in call order.

    The calls wait on the barrier themselves (once, or once per round). An exception in any
    thread breaks the barrier so the others stop too, and is re-raised here.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def work(index: int, call: Callable[[threading.Barrier], T]) -> None:
        try:
            results[index] = call(barrier)
        except BaseException as e:
            errors.append(e)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


def _post_at_once(client: APIClient, path: str, body: dict | None = None, **extra: str) -> Callable:
    def call(barrier: threading.Barrier) -> HttpResponse:
        barrier.wait(BARRIER_TIMEOUT)
        return client.post(path, body, format="json", **extra)

    return call


def _stock(book: Book) -> int:
    book.refresh_from_db()
    return book.stock


def _assert_stock_conserved(initial: dict[int, int]) -> None:
    """Assert initial stock == final stock + copies in non-cancelled orders, book by book."""
    ordered = dict(
        OrderLine.objects.filter(book_id__in=initial)
        .exclude(order__status=Order.Status.CANCELLED)
        .values("book_id")
        .annotate(copies=Sum("quantity"))
        .values_list("book_id", "copies")
    )
    final = dict(Book.objects.filter(pk__in=initial).values_list("pk", "stock"))
    assert {pk: final[pk] + ordered.get(pk, 0) for pk in initial} == initial


# --- placing ----------------------------------------------------------------------------------


def test_order_place_sells_exactly_the_stock_to_concurrent_buyers(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=10)
    buyers = [make_user() for _ in range(50)]
    body = {"lines": [{"book_id": book.pk, "quantity": 1}]}

    responses = _together([_post_at_once(client_for(buyer), ORDERS, body) for buyer in buyers])

    assert Counter(response.status_code for response in responses) == {201: 10, 409: 40}
    for response in responses:
        if response.status_code == 409:
            assert response["Content-Type"] == PROBLEM
            assert response.json()["short_lines"] == [{"book_id": book.pk, "requested": 1, "available": 0}]
    assert _stock(book) == 0
    orders = Order.objects.filter(status=Order.Status.PLACED)
    assert orders.count() == 10
    assert len({order.user_id for order in orders}) == 10
    assert OrderLine.objects.count() == 10
    _assert_stock_conserved({book.pk: 10})


def test_order_place_opposite_line_orders_never_deadlock(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    rounds = 200
    books = [make_book(stock=300) for _ in range(3)]
    # Same books, opposite line order; per round they ask for 3, 3 and 2 copies, so stock runs out
    # part-way and both outcomes (201 and 409) are exercised under contention.
    forward = [{"book_id": book.pk, "quantity": q} for book, q in zip(books, (1, 2, 1), strict=True)]
    backward = [{"book_id": book.pk, "quantity": q} for book, q in zip(books[::-1], (2, 1, 1), strict=True)]

    def buyer(client: APIClient, lines: list[dict]) -> Callable[[threading.Barrier], list[HttpResponse]]:
        def call(barrier: threading.Barrier) -> list[HttpResponse]:
            responses = []
            for _ in range(rounds):
                barrier.wait(BARRIER_TIMEOUT)  # both requests of a round start together
                responses.append(client.post(ORDERS, {"lines": lines}, format="json"))
            return responses

        return call

    # A deadlock would surface as DeadlockDetected raised through the test client (or a 500).
    results = _together([buyer(client_for(make_user()), forward), buyer(client_for(make_user()), backward)])

    statuses = Counter(response.status_code for responses in results for response in responses)
    assert set(statuses) == {201, 409}, statuses
    assert sum(statuses.values()) == 2 * rounds
    assert statuses[201] == Order.objects.count()
    _assert_stock_conserved({book.pk: 300 for book in books})
    assert all(_stock(book) >= 0 for book in books)


def test_order_place_service_opposite_line_orders_never_deadlock(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    books = [make_book(stock=1000) for _ in range(4)]
    forward = [LineRequest(book_id=book.pk, quantity=1) for book in books]
    user = make_user()

    def buyer(lines: list[LineRequest]) -> Callable[[threading.Barrier], int]:
        def call(barrier: threading.Barrier) -> int:
            for _ in range(50):
                barrier.wait(BARRIER_TIMEOUT)
                order_place(user=user, lines=lines)
            return 50

        return call

    placed = _together([buyer(forward), buyer(forward[::-1]), buyer(forward[1::2] + forward[::2])])

    assert Order.objects.count() == sum(placed) == 150
    assert [_stock(book) for book in books] == [850] * 4


# --- a write that lands while another transaction holds the book's row lock ------------------


def _await_a_waiter_on_my_locks() -> None:
    """Return once another connection waits on a lock this connection holds (PostgreSQL's live lock table)."""
    deadline = time.monotonic() + BARRIER_TIMEOUT
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks"
                " WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid)))"
            )
            if cursor.fetchone()[0]:
                return
            assert time.monotonic() < deadline, "nothing queued on the held row lock"
            time.sleep(0.005)  # PostgreSQL announces no lock wait; poll its lock table


def _while_held(hold: Callable[[], object], then: Callable[[], HttpResponse]) -> HttpResponse:
    """Run hold() in a transaction that commits only once then() has started and queued on its locks.

    then() starts after hold() has run, so its unlocked reads see the rows as they were before
    hold() and its row locks wait for hold() to commit: the window between order_place's two reads
    when hold() is a staff edit, or a delete racing an order when hold() places the order.
    """
    held = threading.Event()

    def first(barrier: threading.Barrier) -> None:
        with transaction.atomic():
            hold()
            held.set()
            _await_a_waiter_on_my_locks()

    def second(barrier: threading.Barrier) -> HttpResponse:
        assert held.wait(BARRIER_TIMEOUT)
        return then()

    return _together([first, second])[1]


def test_order_place_checks_the_total_again_at_a_price_raised_before_the_lock(
    customer: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=2000, price="1.00")
    client = client_for(customer)

    def order(quantity: int) -> Callable[[], HttpResponse]:
        return lambda: client.post(ORDERS, {"lines": [{"book_id": book.pk, "quantity": quantity}]}, format="json")

    def raise_price(price: str) -> Callable[[], int]:
        return lambda: Book.objects.filter(pk=book.pk).update(price=Decimal(price))

    refused = _while_held(raise_price("99999999.99"), order(1000))
    Book.objects.filter(pk=book.pk).update(price=Decimal("1.00"))
    sold = _while_held(raise_price("2.50"), order(4))

    # 1000 x 1.00 fitted; 1000 x 99,999,999.99 at the locked price does not, and nothing is sold.
    assert refused.status_code == 422, refused.content
    assert refused["Content-Type"] == PROBLEM
    body = refused.json()
    assert [error["field"] for error in body["errors"]] == ["lines[0].quantity"]
    assert body["max_total"] == str(MAX_ORDER_TOTAL)
    # A raised price that still fits is the price sold at.
    assert sold.status_code == 201, sold.content
    assert sold.json()["total"] == "10.00"
    assert [line["unit_price"] for line in sold.json()["lines"]] == ["2.50"]
    assert Order.objects.get().total == Decimal("10.00")
    assert OrderLine.objects.count() == 1
    assert _stock(book) == 1996


def test_order_place_names_a_book_deleted_before_the_lock_as_unknown(
    customer: User, make_book: Callable[..., Book]
) -> None:
    kept, deleted = make_book(stock=5), make_book(stock=5)
    client = client_for(customer)
    lines = [{"book_id": kept.pk, "quantity": 1}, {"book_id": deleted.pk, "quantity": 1}]

    response = _while_held(
        lambda: Book.objects.filter(pk=deleted.pk).delete(),
        lambda: client.post(ORDERS, {"lines": lines}, format="json"),
    )

    assert response.status_code == 400, response.content
    assert response["Content-Type"] == PROBLEM
    assert response.json()["book_ids"] == [deleted.pk]
    assert not Order.objects.exists()
    assert _stock(kept) == 5


def test_book_delete_racing_an_order_of_it_is_409_and_keeps_the_order(
    customer: User, staff: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    staff_client = client_for(staff)

    # The order is not committed when the delete looks for orders of the book, so only the
    # database's foreign key can stop the delete, once the order commits.
    response = _while_held(
        lambda: order_place(user=customer, lines=[LineRequest(book_id=book.pk, quantity=2)]),
        lambda: staff_client.delete(f"/api/books/{book.pk}"),
    )

    assert response.status_code == 409, response.content
    assert response["Content-Type"] == PROBLEM
    assert response.json()["type"].endswith("/protected")
    assert _stock(book) == 3
    assert OrderLine.objects.get().book_id == book.pk


# --- idempotency ------------------------------------------------------------------------------


def test_order_place_concurrent_retries_with_one_key_place_one_order(
    customer: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=10)
    body = {"lines": [{"book_id": book.pk, "quantity": 3}]}
    retries = [_post_at_once(client_for(customer), ORDERS, body, HTTP_IDEMPOTENCY_KEY="k-1") for _ in range(8)]

    responses = _together(retries)

    assert [response.status_code for response in responses] == [201] * 8
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum(response.get("Idempotent-Replayed") == "true" for response in responses) == 7
    assert Order.objects.count() == 1
    assert _stock(book) == 7


def test_order_place_concurrent_same_key_different_bodies(customer: User, make_book: Callable[..., Book]) -> None:
    # Different books, so the two requests do not queue on the same row locks: the unique
    # (user, key) constraint is what makes the loser wait and then answer 422.
    first, second = make_book(stock=5), make_book(stock=5)
    client = client_for(customer)
    calls = [
        _post_at_once(
            client_for(customer), ORDERS, {"lines": [{"book_id": book.pk, "quantity": 1}]}, HTTP_IDEMPOTENCY_KEY="k"
        )
        for book in (first, second)
    ]

    responses = _together(calls)

    assert sorted(response.status_code for response in responses) == [201, 422]
    assert Order.objects.count() == 1
    assert _stock(first) + _stock(second) == 9
    winner = next(response for response in responses if response.status_code == 201)
    assert client.get(f"/api/orders/{winner.json()['id']}").status_code == 200


def test_order_place_same_key_for_different_users_concurrently(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=10)
    body = {"lines": [{"book_id": book.pk, "quantity": 1}]}
    users = [make_user() for _ in range(5)]

    responses = _together(
        [_post_at_once(client_for(user), ORDERS, body, HTTP_IDEMPOTENCY_KEY="same") for user in users]
    )

    assert [response.status_code for response in responses] == [201] * 5
    assert not any("Idempotent-Replayed" in response for response in responses)
    assert {response.json()["user_id"] for response in responses} == {user.pk for user in users}
    assert _stock(book) == 5


# --- cancelling -------------------------------------------------------------------------------


def test_order_cancel_concurrent_cancels_restore_stock_once(
    customer: User, staff: User, make_book: Callable[..., Book]
) -> None:
    first, second = make_book(stock=10), make_book(stock=10)
    order = order_place(
        user=customer,
        lines=[LineRequest(book_id=first.pk, quantity=4), LineRequest(book_id=second.pk, quantity=6)],
    ).order
    path = f"/api/orders/{order.pk}/cancel"
    cancellers = [_post_at_once(client_for(customer), path) for _ in range(5)]
    cancellers += [_post_at_once(client_for(staff), path) for _ in range(3)]

    responses = _together(cancellers)

    assert Counter(response.status_code for response in responses) == {200: 1, 409: 7}
    assert all(
        response.json()["type"].endswith("/order-not-cancellable")
        for response in responses
        if response.status_code == 409
    )
    assert (_stock(first), _stock(second)) == (10, 10)
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED


def test_order_place_and_cancel_interleaved_conserve_stock(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=20)
    owners = [make_user() for _ in range(10)]
    orders = [order_place(user=u, lines=[LineRequest(book_id=book.pk, quantity=2)]).order for u in owners]
    assert _stock(book) == 0
    body = {"lines": [{"book_id": book.pk, "quantity": 1}]}
    calls = [
        _post_at_once(client_for(owner), f"/api/orders/{o.pk}/cancel") for owner, o in zip(owners, orders, strict=True)
    ]
    calls += [_post_at_once(client_for(make_user()), ORDERS, body) for _ in range(30)]

    responses = _together(calls)

    cancels, places = responses[:10], responses[10:]
    assert [response.status_code for response in cancels] == [200] * 10
    assert {response.status_code for response in places} <= {201, 409}
    sold = sum(response.status_code == 201 for response in places)
    assert _stock(book) == 20 - sold
    _assert_stock_conserved({book.pk: 20})
