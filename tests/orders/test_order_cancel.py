"""Cancelling orders: stock comes back exactly once, only for the owner or staff."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Book
from orders.exceptions import OrderNotCancellable
from orders.models import Order
from orders.services import LineRequest, order_cancel, order_place
from tests.conftest import assert_problem, client_for


def _stock(book: Book) -> int:
    book.refresh_from_db()
    return book.stock


def _place(user: User, *lines: tuple[Book, int]) -> Order:
    requests = [LineRequest(book_id=book.pk, quantity=quantity) for book, quantity in lines]
    return order_place(user=user, lines=requests).order


def test_order_cancel_restores_stock(
    customer: User, customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    first, second = make_book(stock=5), make_book(stock=4)
    order = _place(customer, (first, 2), (second, 4))
    assert (_stock(first), _stock(second)) == (3, 0)

    response = customer_client.post(f"/api/orders/{order.pk}/cancel")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == order.pk
    assert body["status"] == "cancelled"
    assert body["cancelled_at"] is not None
    assert len(body["lines"]) == 2
    assert (_stock(first), _stock(second)) == (5, 4)
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED


def test_order_cancel_twice_is_conflict_and_restores_once(
    customer: User, customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    order = _place(customer, (book, 3))
    assert customer_client.post(f"/api/orders/{order.pk}/cancel").status_code == 200

    response = customer_client.post(f"/api/orders/{order.pk}/cancel")

    body = assert_problem(response, 409)
    assert body["type"].endswith("/order-not-cancellable")
    assert body["order_id"] == order.pk
    assert _stock(book) == 5


def test_order_cancel_service_refuses_second_cancel(customer: User, make_book: Callable[..., Book]) -> None:
    book = make_book(stock=5)
    order = _place(customer, (book, 2))
    cancelled = order_cancel(order=order)
    assert cancelled.status == Order.Status.CANCELLED

    with pytest.raises(OrderNotCancellable):
        order_cancel(order=Order.objects.get(pk=order.pk))

    assert _stock(book) == 5


def test_order_cancel_of_another_customers_order_is_not_found(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    owner, other = make_user(), make_user()
    book = make_book(stock=5)
    order = _place(owner, (book, 2))

    response = client_for(other).post(f"/api/orders/{order.pk}/cancel")

    body = assert_problem(response, 404)
    assert body["type"].endswith("/not-found")
    order.refresh_from_db()
    assert order.status == Order.Status.PLACED
    assert _stock(book) == 3


def test_order_cancel_by_staff_of_any_order(
    customer: User, staff_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    order = _place(customer, (book, 2))

    response = staff_client.post(f"/api/orders/{order.pk}/cancel")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    assert response.json()["user_id"] == customer.pk
    assert _stock(book) == 5


def test_order_cancel_of_unknown_order_is_not_found(customer_client: APIClient) -> None:
    response = customer_client.post("/api/orders/999999/cancel")

    assert_problem(response, 404)


def test_order_cancel_by_suspended_owner_is_refused(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    owner = make_user()
    book = make_book(stock=5)
    order = _place(owner, (book, 2))
    User.objects.filter(pk=owner.pk).update(status=User.Status.SUSPENDED)

    response = client_for(owner).post(f"/api/orders/{order.pk}/cancel")

    body = assert_problem(response, 403)
    assert body["type"].endswith("/account-suspended")
    order.refresh_from_db()
    assert order.status == Order.Status.PLACED
    assert _stock(book) == 3


def test_order_cancel_then_replay_returns_cancelled_order_without_selling_again(
    customer: User, customer_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    lines = {"lines": [{"book_id": book.pk, "quantity": 2}]}
    placed = customer_client.post("/api/orders", lines, format="json", HTTP_IDEMPOTENCY_KEY="once")
    customer_client.post(f"/api/orders/{placed.json()['id']}/cancel")

    replay = customer_client.post("/api/orders", lines, format="json", HTTP_IDEMPOTENCY_KEY="once")

    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == placed.json()["id"]
    assert replay.json()["status"] == "cancelled"
    assert _stock(book) == 5
