"""Property-based run of every documented operation against the app, as staff.

Schemathesis generates valid and invalid requests from /api/schema/ and checks that no answer is
a server error and that every answer (status code, content type, body) is the one documented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
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
from orders.models import Order

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# 25 examples per operation and mode keeps the whole run well under a minute.
EXAMPLES = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _runs() -> list[tuple[str, str, GenerationMode]]:
    """Return (method, path, mode) for every documented operation (fault injection is not documented)."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    runs = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            runs.append((method.upper(), path, GenerationMode.POSITIVE))
            # Negative data needs something to spoil: a parameter or a body.
            if operation.get("parameters") or "requestBody" in operation:
                runs.append((method.upper(), path, GenerationMode.NEGATIVE))
    return runs


@pytest.fixture
def api_schema(db: None) -> Iterator[schemathesis.BaseSchema]:
    # Requests go straight to the WSGI app, which closes the connection around each request and
    # with it the test's transaction. Django's own test client unhooks these signals the same way.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/", application)
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)


@pytest.fixture
def staff_token(staff: User, make_book: Callable[..., Book]) -> str:
    # A few books, so reads and writes by id sometimes find one instead of always answering 404.
    for _ in range(3):
        make_book()
    return token_create(user=staff).token


@pytest.mark.parametrize(("method", "path", "mode"), _runs())
def test_api_operation_conforms_to_its_schema(
    api_schema: schemathesis.BaseSchema, staff_token: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Token {staff_token}"}

    @EXAMPLES
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


def test_api_success_responses_conform_to_the_schema(
    api_schema: schemathesis.BaseSchema,
    staff: User,
    customer: User,
    make_book: Callable[..., Book],
) -> None:
    """Walk the happy paths the fuzzer rarely reaches (a valid ISBN, a real order) and check them too."""
    ordered = make_book(title="River Song", authors=["Ann Author"], stock=5)
    spare = make_book(stock=5)
    as_staff = {"Authorization": f"Token {token_create(user=staff).token}"}
    as_customer = {"Authorization": f"Token {token_create(user=customer).token}"}
    book = {"isbn": "0-306-40615-2", "title": "Fuzzed", "authors": ["Bea"], "price": "3.50", "stock": 2}
    steps: list[tuple[dict, str, str, dict, dict, object, int]] = [
        ({}, "GET", "/api/books", {}, {"author": "ann", "in_stock": "true", "ordering": "-price"}, None, 200),
        ({}, "GET", "/api/books/search", {}, {"q": "rivers"}, None, 200),
        ({}, "GET", "/api/books/{id}", {"id": ordered.pk}, {}, None, 200),
        ({}, "GET", "/api/books/{id}", {"id": 999999}, {}, None, 404),
        ({}, "POST", "/api/books", {}, {}, book, 401),
        (as_customer, "POST", "/api/books", {}, {}, book, 403),
        (as_staff, "POST", "/api/books", {}, {}, book, 201),
        (as_staff, "POST", "/api/books", {}, {}, book, 409),
        (as_staff, "PUT", "/api/books/{id}", {"id": spare.pk}, {}, {**book, "isbn": "080442957X"}, 200),
        (as_staff, "PATCH", "/api/books/{id}", {"id": spare.pk}, {}, {"published_on": "2020-02-29"}, 200),
        (as_customer, "POST", "/api/orders", {}, {}, {"lines": [{"book_id": ordered.pk, "quantity": 2}]}, 201),
        (as_customer, "POST", "/api/orders", {}, {}, {"lines": [{"book_id": ordered.pk, "quantity": 99}]}, 409),
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
            201,
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
