"""The orders API: who may do what, and bad input that must never become a 500."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.http import HttpResponse
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Book
from orders.models import Order, OrderLine
from orders.services import LineRequest, order_place
from tests.conftest import assert_problem, client_for

ORDERS = "/api/orders"


def _place(user: User, book: Book, quantity: int = 1) -> Order:
    return order_place(user=user, lines=[LineRequest(book_id=book.pk, quantity=quantity)]).order


def _ids(response: HttpResponse) -> set[int]:
    assert response.status_code == 200, response.content
    return {order["id"] for order in response.json()["results"]}


@pytest.fixture
def book(make_book: Callable[..., Book]) -> Book:
    return make_book(stock=50)


@pytest.fixture
def order(customer: User, book: Book) -> Order:
    return _place(customer, book)


# --- anonymous --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", ORDERS),
        ("post", ORDERS),
        ("get", "/api/orders/{pk}"),
        ("post", "/api/orders/{pk}/cancel"),
    ],
)
def test_orders_api_requires_authentication(
    anon_client: APIClient, order: Order, book: Book, method: str, path: str
) -> None:
    body = {"lines": [{"book_id": book.pk, "quantity": 1}]}

    response = getattr(anon_client, method)(path.format(pk=order.pk), body, format="json")

    problem = assert_problem(response, 401)
    assert problem["type"].endswith("/not-authenticated")
    assert response["WWW-Authenticate"] == "Token"
    assert Order.objects.count() == 1
    order.refresh_from_db()
    assert order.status == Order.Status.PLACED


def test_orders_api_rejects_unknown_token(anon_client: APIClient, book: Book) -> None:
    anon_client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)

    response = anon_client.post(ORDERS, {"lines": [{"book_id": book.pk, "quantity": 1}]}, format="json")

    assert_problem(response, 401)
    assert "WWW-Authenticate" in response
    assert Order.objects.count() == 0


# --- customers and staff ----------------------------------------------------------------------


def test_orders_api_customer_sees_only_own_orders(make_user: Callable[..., User], book: Book) -> None:
    alice, bob = make_user(), make_user()
    alices = {_place(alice, book).pk, _place(alice, book).pk}
    _place(bob, book)

    assert _ids(client_for(alice).get(ORDERS)) == alices


def test_orders_api_staff_sees_all_orders(make_user: Callable[..., User], staff_client: APIClient, book: Book) -> None:
    placed = {_place(make_user(), book).pk for _ in range(3)}

    assert _ids(staff_client.get(ORDERS)) == placed


def test_orders_api_customer_reads_own_order(customer_client: APIClient, order: Order) -> None:
    response = customer_client.get(f"/api/orders/{order.pk}")

    assert response.status_code == 200
    assert response.json()["id"] == order.pk


def test_orders_api_customer_cannot_read_others_order(make_user: Callable[..., User], order: Order) -> None:
    response = client_for(make_user()).get(f"/api/orders/{order.pk}")

    assert assert_problem(response, 404)["type"].endswith("/not-found")


def test_orders_api_staff_reads_any_order(staff_client: APIClient, order: Order) -> None:
    response = staff_client.get(f"/api/orders/{order.pk}")

    assert response.status_code == 200
    assert response.json()["user_id"] == order.user_id


@pytest.mark.parametrize("path", ["/api/orders/abc", "/api/orders/99999999999999999999999"])
def test_orders_api_answers_bad_order_ids_with_not_found(customer_client: APIClient, path: str) -> None:
    assert_problem(customer_client.get(path), 404)
    assert_problem(customer_client.post(path + "/cancel"), 404)


def test_orders_api_staff_may_place_orders(staff_client: APIClient, book: Book) -> None:
    response = staff_client.post(ORDERS, {"lines": [{"book_id": book.pk, "quantity": 1}]}, format="json")

    assert response.status_code == 201


# --- suspended customers ----------------------------------------------------------------------


def test_orders_api_suspended_customer_cannot_place(suspended_client: APIClient, book: Book) -> None:
    response = suspended_client.post(ORDERS, {"lines": [{"book_id": book.pk, "quantity": 1}]}, format="json")

    assert assert_problem(response, 403)["type"].endswith("/account-suspended")
    assert Order.objects.count() == 0
    book.refresh_from_db()
    assert book.stock == 50


def test_orders_api_suspended_customer_cannot_cancel(suspended: User, suspended_client: APIClient, book: Book) -> None:
    order = _place(suspended, book)  # placed before the suspension

    response = suspended_client.post(f"/api/orders/{order.pk}/cancel")

    assert assert_problem(response, 403)["type"].endswith("/account-suspended")
    order.refresh_from_db()
    assert order.status == Order.Status.PLACED


def test_orders_api_suspended_customer_still_reads_own_orders(
    suspended: User, suspended_client: APIClient, book: Book
) -> None:
    order = _place(suspended, book)

    assert _ids(suspended_client.get(ORDERS)) == {order.pk}
    assert suspended_client.get(f"/api/orders/{order.pk}").status_code == 200


# --- bad input on POST /api/orders ------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({}, "lines", id="missing-lines"),
        pytest.param({"lines": None}, "lines", id="null-lines"),
        pytest.param({"lines": []}, "lines", id="empty-lines"),
        pytest.param({"lines": "1x book"}, "lines", id="lines-string"),
        pytest.param({"lines": {"book_id": 1, "quantity": 1}}, "lines", id="lines-object"),
        pytest.param({"lines": [None]}, "lines[0]", id="null-line"),
        pytest.param({"lines": [7]}, "lines[0]", id="line-number"),
        pytest.param({"lines": [[1, 1]]}, "lines[0]", id="line-list"),
        pytest.param({"lines": [{"quantity": 1}]}, "lines[0].book_id", id="missing-book"),
        pytest.param({"lines": [{"book_id": "{book}"}]}, "lines[0].quantity", id="missing-quantity"),
        pytest.param({"lines": [{"book_id": None, "quantity": 1}]}, "lines[0].book_id", id="null-book"),
        pytest.param({"lines": [{"book_id": "{book}", "quantity": None}]}, "lines[0].quantity", id="null-qty"),
        pytest.param({"lines": [{"book_id": "abc", "quantity": 1}]}, "lines[0].book_id", id="book-string"),
        pytest.param({"lines": [{"book_id": 2**70, "quantity": 1}]}, "lines[0].book_id", id="book-huge"),
        pytest.param({"lines": [{"book_id": -1, "quantity": 1}]}, "lines[0].book_id", id="book-negative"),
        pytest.param({"lines": [{"book_id": 0, "quantity": 1}]}, "lines[0].book_id", id="book-zero"),
        pytest.param({"lines": [{"book_id": 1.5, "quantity": 1}]}, "lines[0].book_id", id="book-float"),
        pytest.param({"lines": [{"book_id": True, "quantity": 1}]}, "lines[0].book_id", id="book-bool"),
        pytest.param({"lines": [{"book_id": [1], "quantity": 1}]}, "lines[0].book_id", id="book-list"),
        pytest.param({"lines": [{"book_id": "{book}", "quantity": 0}]}, "lines[0].quantity", id="qty-zero"),
        pytest.param({"lines": [{"book_id": "{book}", "quantity": -3}]}, "lines[0].quantity", id="qty-neg"),
        pytest.param({"lines": [{"book_id": "{book}", "quantity": 10**30}]}, "lines[0].quantity", id="qty-huge"),
        pytest.param({"lines": [{"book_id": "{book}", "quantity": 1001}]}, "lines[0].quantity", id="qty-over"),
        pytest.param({"lines": [{"book_id": "{book}", "quantity": "two"}]}, "lines[0].quantity", id="qty-str"),
        pytest.param({"lines": [{"book_id": "{book}", "quantity": 1e300}]}, "lines[0].quantity", id="qty-1e300"),
        pytest.param({"lines": [{"book_id": "{book}", "quantity": {}}]}, "lines[0].quantity", id="qty-object"),
        pytest.param({"lines": [{"book_id": n, "quantity": 1} for n in range(1, 102)]}, "lines", id="too-many-lines"),
    ],
)
def test_orders_api_rejects_invalid_order_body(
    customer_client: APIClient, book: Book, payload: dict, field: str
) -> None:
    raw = json.dumps(payload).replace('"{book}"', str(book.pk))

    response = customer_client.post(ORDERS, raw, content_type="application/json")

    body = assert_problem(response, 400)
    assert body["type"].endswith("/validation-error")
    assert field in {error["field"] for error in body["errors"]}
    assert all(error["code"] and error["message"] for error in body["errors"])
    assert Order.objects.count() == 0
    assert OrderLine.objects.count() == 0
    book.refresh_from_db()
    assert book.stock == 50


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("[]", id="empty-list"),
        pytest.param('[{"lines": []}]', id="list"),
        pytest.param("42", id="number"),
        pytest.param('"lines"', id="string"),
        pytest.param("null", id="null"),
        pytest.param("true", id="bool"),
    ],
)
def test_orders_api_rejects_non_object_body(customer_client: APIClient, raw: str) -> None:
    response = customer_client.post(ORDERS, raw, content_type="application/json")

    body = assert_problem(response, 400)
    assert body["errors"]
    assert Order.objects.count() == 0


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param('{"lines": [', id="truncated"),
        pytest.param("{'lines': []}", id="single-quotes"),
        pytest.param('{"lines": [{"book_id": NaN, "quantity": 1}]}', id="nan"),
        pytest.param('{"lines": [{"book_id": 1, "quantity": Infinity}]}', id="infinity"),
        pytest.param(b'{"lines": "\xff\xfe"}', id="not-utf8"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deeply-nested"),
    ],
)
def test_orders_api_rejects_malformed_json(customer_client: APIClient, raw: str | bytes) -> None:
    response = customer_client.post(ORDERS, raw, content_type="application/json")

    body = assert_problem(response, 400)
    assert body["type"].endswith("/malformed-request")
    assert Order.objects.count() == 0


def test_orders_api_treats_empty_body_as_missing_lines(customer_client: APIClient) -> None:
    response = customer_client.post(ORDERS, "", content_type="application/json")

    body = assert_problem(response, 400)
    assert [error["field"] for error in body["errors"]] == ["lines"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/octet-stream", "image/png"])
def test_orders_api_rejects_unsupported_content_type(customer_client: APIClient, book: Book, content_type: str) -> None:
    raw = json.dumps({"lines": [{"book_id": book.pk, "quantity": 1}]})

    response = customer_client.post(ORDERS, raw, content_type=content_type)

    assert assert_problem(response, 415)["type"].endswith("/unsupported-media-type")
    assert Order.objects.count() == 0


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        ("lines=book_id:{book}", "application/x-www-form-urlencoded"),
        ("lines[0]book_id={book}&lines[0]quantity=1", "application/x-www-form-urlencoded"),
        ("lines=1&padding=" + "x" * 300_000, "application/x-www-form-urlencoded"),
        (
            '--b\r\nContent-Disposition: form-data; name="lines"\r\n\r\n{book}\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
    ],
    ids=["form", "form-indexed", "form-oversize", "multipart"],
)
def test_orders_api_takes_json_only(customer_client: APIClient, book: Book, raw: str, content_type: str) -> None:
    """Lines are a list of objects: form encodings cannot carry them, so they are refused unread (415)."""
    response = customer_client.post(ORDERS, raw.replace("{book}", str(book.pk)), content_type=content_type)

    assert assert_problem(response, 415)["type"].endswith("/unsupported-media-type")
    assert Order.objects.count() == 0
    book.refresh_from_db()
    assert book.stock == 50


def test_orders_api_rejects_oversize_body(customer_client: APIClient, book: Book) -> None:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    payload: Any = {"lines": [{"book_id": book.pk, "quantity": 1}], "padding": "x" * limit}
    raw = json.dumps(payload)
    assert len(raw) > limit

    response = customer_client.post(ORDERS, raw, content_type="application/json")

    assert assert_problem(response, 413)["type"].endswith("/payload-too-large")
    assert Order.objects.count() == 0
    book.refresh_from_db()
    assert book.stock == 50


def test_orders_api_accepts_body_just_under_the_limit(customer_client: APIClient, book: Book) -> None:
    head = json.dumps({"lines": [{"book_id": book.pk, "quantity": 1}], "padding": ""})
    raw = head[:-2] + "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE - len(head)) + head[-2:]
    assert len(raw) == settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    response = customer_client.post(ORDERS, raw, content_type="application/json")

    assert response.status_code == 201, response.content


def test_orders_api_cancel_ignores_a_body(customer_client: APIClient, order: Order) -> None:
    response = customer_client.post(f"/api/orders/{order.pk}/cancel", "not json", content_type="text/plain")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_orders_api_refuses_other_methods(customer_client: APIClient, order: Order, method: str) -> None:
    response = getattr(customer_client, method)(f"/api/orders/{order.pk}", {}, format="json")

    assert_problem(response, 405)
    assert Order.objects.filter(pk=order.pk).exists()
