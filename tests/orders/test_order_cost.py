"""What placing an order costs: statements per order, and an answer built without a second read."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Book
from orders.models import Order
from orders.serializers import OrderOutput
from tests.conftest import client_for

ORDERS = "/api/orders"


def _order(client: APIClient, books: list[Book], quantity: int = 1) -> dict:
    response = client.post(
        ORDERS, {"lines": [{"book_id": book.pk, "quantity": quantity} for book in books]}, format="json"
    )
    assert response.status_code == 201, response.content
    return response.json()


def test_a_one_line_order_costs_four_statements(
    customer: User, make_book: Callable[..., Book], token_cache_live: None, django_assert_max_num_queries: Callable
) -> None:
    book = make_book(stock=10)
    client = client_for(customer)
    _order(client, [book])  # this worker learns the policies and the token

    # Read the prices, insert the order, insert its line, take the copies if they are there; the
    # savepoint and its release are the test's own transaction around the service's.
    with django_assert_max_num_queries(4 + 2):
        _order(client, [book])

    book.refresh_from_db()
    assert book.stock == 8


def test_an_order_of_twenty_lines_costs_five_statements(
    customer: User, make_book: Callable[..., Book], token_cache_live: None, django_assert_max_num_queries: Callable
) -> None:
    books = [make_book(stock=10) for _ in range(20)]
    client = client_for(customer)
    _order(client, books[:2])

    # Prices, order, lines, lock (in primary-key order), one UPDATE for every line; plus the savepoint.
    with django_assert_max_num_queries(5 + 2):
        _order(client, books, quantity=3)

    stock = Book.objects.filter(pk__in=[book.pk for book in books]).values_list("stock", flat=True)
    assert sorted(stock) == [6, 6] + [7] * 18


def test_the_answer_to_an_order_is_what_reading_it_back_shows(
    customer: User, make_book: Callable[..., Book], token_cache_live: None
) -> None:
    books = [make_book(stock=10, price=price) for price in ("12.50", "0.99", "99999999.99", "7")]
    client = client_for(customer)

    placed = _order(client, books, quantity=2)
    read_back = client.get(f"{ORDERS}/{placed['id']}")

    assert read_back.status_code == 200
    assert placed == read_back.json()
    assert placed == OrderOutput(Order.objects.prefetch_related("lines").get(pk=placed["id"])).data
    assert [line["unit_price"] for line in placed["lines"]] == ["12.50", "0.99", "99999999.99", "7.00"]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param({"book_id": "{book}", "quantity": 2}, id="canonical"),
        pytest.param({"book_id": "{book}", "quantity": "2"}, id="quantity-as-string"),
        pytest.param({"book_id": "{book}", "quantity": 2.0}, id="quantity-as-float"),
        pytest.param({"book_id": "{book}", "quantity": 2, "note": "gift"}, id="unknown-key"),
    ],
)
def test_every_form_validation_accepts_places_the_same_order(
    customer: User, make_book: Callable[..., Book], line: dict
) -> None:
    book = make_book(stock=10, price="3.00")
    raw = json.dumps({"lines": [line]}).replace('"{book}"', str(book.pk))

    response = client_for(customer).post(ORDERS, raw, content_type="application/json")

    assert response.status_code == 201, response.content
    assert [(line["book_id"], line["quantity"]) for line in response.json()["lines"]] == [(book.pk, 2)]
    assert response.json()["total"] == "6.00"
