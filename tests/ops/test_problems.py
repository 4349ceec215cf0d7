"""The API's one error shape for database errors that validation did not foresee."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.db.models import F
from django.test import Client
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.models import Book

PROBLEM = "application/problem+json"


class OverflowingWriteApi(APIView):
    """A write whose value passed no check of ours and that the database refuses: stock past int4."""

    permission_classes = [AllowAny]

    def post(self, request: Request, pk: int) -> Response:
        with transaction.atomic():
            Book.objects.filter(pk=pk).update(stock=F("stock") + 2**31)
        return Response({"ok": True})


class ModelCheckedWriteApi(APIView):
    """A write checked by the model itself: a Django ValidationError reaches the exception handler."""

    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        Book(isbn=str(request.data.get("isbn", "")), title="Unchecked", price=Decimal("1.00")).full_clean()
        return Response({"ok": True})


urlpatterns = [
    path("api/test/books/<int:pk>/overflow", OverflowingWriteApi.as_view()),
    path("api/test/books/model-checked", ModelCheckedWriteApi.as_view()),
]


@pytest.mark.urls(__name__)
def test_a_value_the_database_cannot_store_is_a_400_problem_not_a_500(
    client: Client, make_book: Callable[..., Book], json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    book = make_book(stock=7)

    response = client.post(f"/api/test/books/{book.pk}/overflow")

    assert response.status_code == 400, response.content
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["type"].endswith("/unstorable-value")
    assert body["instance"] == f"/api/test/books/{book.pk}/overflow"
    assert "integer" not in response.content.decode()  # the database's own words stay in the log
    book.refresh_from_db()
    assert book.stock == 7
    assert [line["message"] for line in json_lines() if line.get("event") == "data_error"] == [
        "value the database cannot store: integer out of range"
    ]


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_a_model_validation_error_is_a_400_problem_naming_the_field(client: Client) -> None:
    response = client.post("/api/test/books/model-checked", {"isbn": "not-an-isbn"}, content_type="application/json")

    assert response.status_code == 400, response.content
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["type"].endswith("/validation-error")
    assert [(error["field"], error["code"]) for error in body["errors"]] == [("isbn", "isbn")]
    assert not Book.objects.exists()
