"""Property-based run of every documented operation against the app, as anyone, a customer and staff.

Schemathesis generates valid and invalid requests from /api/schema/ and checks that no answer is
a server error and that every answer (status code, content type, body) is the one documented.
Each role runs the whole schema with its own credentials: an anonymous client mostly meets 401s
and the public reads, a customer reaches orders, staff the catalogue writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import User
from accounts.services import token_create
from bookstore.wsgi import application
from catalog.models import Book
from catalog.serializers import MAX_PRICE
from orders.models import Order
from orders.services import LineRequest, order_place

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SETTINGS = settings(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
# Examples per operation, mode and role: 25 keep the file near 40 s of CPU, and since half the orders
# go to the shop fixture's books, every customer and staff run orders more than 100 copies of the
# dearest one (a total past what an order holds) several times. SCHEMATHESIS_EXAMPLES runs deeper.
# A role refused before the view reads anything (401 or 403 whatever the input) needs only a few.
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
REFUSED_EXAMPLES = max(1, EXAMPLES // 5)
ROLES = ["anonymous", "customer", "staff"]
# Catalogue writes: a customer is refused them (403) before the request body is read.
STAFF_ONLY = {
    ("POST", "/api/books"),
    ("PUT", "/api/books/{id}"),
    ("PATCH", "/api/books/{id}"),
    ("DELETE", "/api/books/{id}"),
}


def _runs() -> list[Any]:
    """Return (role, method, path, mode, examples) for every documented operation (fault injection is not)."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    runs = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            modes = [GenerationMode.POSITIVE]
            # Negative data needs something to spoil: a parameter or a body.
            if operation.get("parameters") or "requestBody" in operation:
                modes.append(GenerationMode.NEGATIVE)
            for role in ROLES:
                refused = (role == "anonymous" and {} not in operation["security"]) or (
                    role == "customer" and (method.upper(), path) in STAFF_ONLY
                )
                for mode in modes:
                    examples = REFUSED_EXAMPLES if refused else EXAMPLES
                    label = f"{method.upper()}-{path}-{mode.value}-{role}"
                    runs.append(pytest.param(role, method.upper(), path, mode, examples, id=label))
    return runs


def _auth(user: User) -> dict[str, str]:
    """Return an Authorization header with a fresh token of the user's."""
    return {"Authorization": f"Token {token_create(user=user).token}"}


@dataclass(frozen=True)
class Shop:
    """The rows a run starts with, and the headers of the role making the requests."""

    headers: dict[str, str]
    book_ids: list[int]
    order_ids: list[int]


@pytest.fixture(scope="module")
def served_schema(django_db_setup: None, django_db_blocker: Any) -> schemathesis.BaseSchema:
    """Return the schema the running app serves at /api/schema/, fetched once for the whole file."""
    with django_db_blocker.unblock():
        return schemathesis.openapi.from_wsgi("/api/schema/", application)


@pytest.fixture
def api_schema(db: None, served_schema: schemathesis.BaseSchema) -> Iterator[schemathesis.BaseSchema]:
    # Requests go straight to the WSGI app, which closes the connection around each request and
    # with it the test's transaction. Django's own test client unhooks these signals the same way.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield served_schema
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)


@pytest.fixture
def shop(request: pytest.FixtureRequest, customer: User, staff: User, make_book: Callable[..., Book]) -> Shop:
    """Books at the catalogue's edges and a customer's order; request.param names the role."""
    books = [
        make_book(),
        make_book(stock=0),
        make_book(stock=1_000_000, price=str(MAX_PRICE)),  # 101 copies total more than an order holds
    ]
    order = order_place(user=customer, lines=[LineRequest(book_id=books[0].pk, quantity=1)]).order
    headers = {"anonymous": {}, "customer": _auth(customer), "staff": _auth(staff)}[request.param]
    return Shop(headers=headers, book_ids=[book.pk for book in books], order_ids=[order.pk])


def _aim_at_rows_that_exist(case: schemathesis.Case, data: st.DataObject, shop: Shop) -> None:
    """Point about half the generated requests at rows that exist, so they get past 404s and unknown books.

    A generated id is almost never one in the database. Hypothesis draws whether and where to aim,
    so a failure still shrinks to the simplest request. An aimed order keeps its generated
    quantities but names each existing book once (a book on two lines is refused before anything
    else is looked at), so it drops the lines beyond those books.
    """
    path_id = case.path_parameters.get("id")
    if type(path_id) is int and data.draw(st.booleans(), label="aim id"):
        ids = shop.order_ids if case.path.startswith("/api/orders/") else shop.book_ids
        case.path_parameters["id"] = data.draw(st.sampled_from(ids), label="id")
    lines = case.body.get("lines") if isinstance(case.body, dict) else None
    orderable = isinstance(lines, list) and all(isinstance(line, dict) for line in lines)
    if orderable and data.draw(st.booleans(), label="aim lines"):
        book_ids = data.draw(st.permutations(shop.book_ids), label="book ids")
        del lines[len(book_ids) :]
        for line, book_id in zip(lines, book_ids, strict=False):
            line["book_id"] = book_id


@pytest.mark.parametrize(("shop", "method", "path", "mode", "examples"), _runs(), indirect=["shop"])
def test_api_operation_conforms_to_its_schema(
    api_schema: schemathesis.BaseSchema, shop: Shop, method: str, path: str, mode: GenerationMode, examples: int
) -> None:
    operation = api_schema[path][method]

    @settings(SETTINGS, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: schemathesis.Case, data: st.DataObject) -> None:
        _aim_at_rows_that_exist(case, data, shop)
        case.call_and_validate(headers=shop.headers, checks=CHECKS)

    run()


def test_api_success_responses_conform_to_the_schema(
    api_schema: schemathesis.BaseSchema,
    staff: User,
    customer: User,
    make_book: Callable[..., Book],
) -> None:
    """Walk the paths the fuzzer rarely reaches (a valid ISBN, a real order) and check them too."""
    ordered = make_book(title="River Song", authors=["Ann Author"], stock=5)
    spare = make_book(stock=5)
    dear = make_book(stock=200, price=str(MAX_PRICE))
    as_staff, as_customer = _auth(staff), _auth(customer)
    book = {"isbn": "0-306-40615-2", "title": "Fuzzed", "authors": ["Bea"], "price": "3.50", "stock": 2}
    partial = {**book, "isbn": "080442957X"}  # PUT replaces the whole book: this leaves fields out
    whole = {**partial, "description": "", "published_on": None}
    too_dear = {"lines": [{"book_id": dear.pk, "quantity": 101}]}
    steps: list[tuple[dict, str, str, dict, dict, object, int]] = [
        ({}, "GET", "/api/books", {}, {"author": "ann", "in_stock": "true", "ordering": "-price"}, None, 200),
        ({}, "GET", "/api/books/search", {}, {"q": "rivers"}, None, 200),
        ({}, "GET", "/api/books/{id}", {"id": ordered.pk}, {}, None, 200),
        ({}, "GET", "/api/books/{id}", {"id": 999999}, {}, None, 404),
        ({}, "POST", "/api/books", {}, {}, book, 401),
        (as_customer, "POST", "/api/books", {}, {}, book, 403),
        (as_staff, "POST", "/api/books", {}, {}, book, 201),
        (as_staff, "POST", "/api/books", {}, {}, book, 409),
        (as_staff, "PUT", "/api/books/{id}", {"id": spare.pk}, {}, partial, 400),
        (as_staff, "PUT", "/api/books/{id}", {"id": spare.pk}, {}, whole, 200),
        (as_staff, "PATCH", "/api/books/{id}", {"id": spare.pk}, {}, {"published_on": "2020-02-29"}, 200),
        (as_customer, "POST", "/api/orders", {}, {}, {"lines": [{"book_id": ordered.pk, "quantity": 2}]}, 201),
        (as_customer, "POST", "/api/orders", {}, {}, {"lines": [{"book_id": ordered.pk, "quantity": 99}]}, 409),
        (as_customer, "POST", "/api/orders", {}, {}, too_dear, 422),
        (as_customer, "GET", "/api/orders", {}, {}, None, 200),
        (as_staff, "DELETE", "/api/books/{id}", {"id": ordered.pk}, {}, None, 409),
        (as_staff, "DELETE", "/api/books/{id}", {"id": spare.pk}, {}, None, 204),
        (as_customer, "GET", "/api/accounts/me", {}, {}, None, 200),
        (
            {},
            "POST",
            "/api/accounts/register",
            {},
            {},
            {"username": "fuzz", "email": "f@example.com", "password": "correct-horse-battery"},
            202,
        ),
        ({}, "POST", "/api/accounts/token", {}, {}, {"username": "fuzz", "password": "correct-horse-battery"}, 200),
    ]
    for headers, method, path, path_parameters, query, body, status in steps:
        extra = {} if body is None else {"body": body, "media_type": "application/json"}
        case = api_schema[path][method].Case(path_parameters=path_parameters, query=query, **extra)

        response = case.call_and_validate(headers=headers, checks=CHECKS)

        assert response.status_code == status, (method, path, response.text)
    order_id = Order.objects.get().pk
    for method, path in [("GET", "/api/orders/{id}"), ("POST", "/api/orders/{id}/cancel")]:
        case = api_schema[path][method].Case(path_parameters={"id": order_id})
        response = case.call_and_validate(headers=as_customer, checks=CHECKS)
        assert response.status_code == 200, (method, path, response.text)
    # Signing out last: the tokens stop working.
    for headers, method, path, status in [
        (as_staff, "POST", "/api/accounts/logout", 204),
        (as_staff, "GET", "/api/accounts/me", 401),
        (as_customer, "POST", "/api/accounts/logout-all", 204),
        (as_customer, "GET", "/api/orders", 401),
    ]:
        response = api_schema[path][method].Case().call_and_validate(headers=headers, checks=CHECKS)
        assert response.status_code == status, (method, path, response.text)
