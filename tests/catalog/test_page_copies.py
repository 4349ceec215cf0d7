"""Kept copies of rendered book pages (catalog/http.py): the same bytes for one version read, gone with any change."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.models import User
from catalog import http
from catalog.models import Book
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

JSON = "application/json"
HEADERS = ("Content-Type", "ETag", "Cache-Control", "Vary", "Allow")


def _twice(client: APIClient, url: str, **extra: str) -> tuple[object, object, list[str]]:
    """GET url twice; return both answers and the SQL the second one ran."""
    first = client.get(url, **extra)
    with CaptureQueriesContext(connection) as queries:
        second = client.get(url, **extra)
    return first, second, [q["sql"] for q in queries]


def _kept() -> float:
    return http.pages_served.labels("kept")._value.get()


def test_a_repeated_list_or_detail_page_is_the_same_answer_for_the_version_read_alone(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River", authors=["Ann River"])
    make_book(title="Night Garden")
    for url in ("/api/books", f"/api/books/{book.pk}", "/api/books?ordering=-price&page_size=1"):
        kept_before = _kept()
        first, second, sql = _twice(anon_client, url, HTTP_ACCEPT=JSON)

        assert first.status_code == second.status_code == 200
        assert second.content == first.content
        assert {h: second.get(h) for h in HEADERS} == {h: first.get(h) for h in HEADERS}
        assert len(sql) == 1
        assert "catalog_book" not in sql[0]
        assert _kept() == kept_before + 1


def test_a_page_kept_before_an_order_shows_the_stock_it_took(
    anon_client: APIClient, customer: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    for url in ("/api/books", f"/api/books/{book.pk}"):
        anon_client.get(url)
        assert anon_client.get(url).status_code == 200  # now kept
    placed = client_for(customer).post("/api/orders", {"lines": [{"book_id": book.pk, "quantity": 2}]}, format="json")
    assert placed.status_code == 201

    assert anon_client.get(f"/api/books/{book.pk}").json()["stock"] == 3
    assert anon_client.get("/api/books").json()["results"][0]["stock"] == 3


def test_a_page_kept_before_a_staff_edit_shows_the_edit(
    anon_client: APIClient, staff_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River")
    url = f"/api/books/{book.pk}"
    anon_client.get(url)
    anon_client.get(url)

    assert staff_client.patch(url, {"title": "The Sea"}, format="json").status_code == 200

    assert anon_client.get(url).json()["title"] == "The Sea"


def test_each_media_type_and_host_gets_its_own_copy(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book()
    make_book()
    plain = anon_client.get("/api/books?page_size=1", HTTP_ACCEPT=JSON)
    indented = anon_client.get("/api/books?page_size=1", HTTP_ACCEPT=f"{JSON}; indent=4")
    with override_settings(ALLOWED_HOSTS=["testserver", "shop.example"]):
        elsewhere = anon_client.get("/api/books?page_size=1", HTTP_ACCEPT=JSON, HTTP_HOST="shop.example")

    assert indented.content != plain.content
    assert b"\n    " in indented.content
    assert elsewhere.json()["next"].startswith("http://shop.example/")
    assert plain.json()["next"].startswith("http://testserver/")


def test_pages_for_clients_with_credentials_html_and_searches_are_rendered_every_time(
    anon_client: APIClient, customer: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River")
    anon_client.get(f"/api/books/{book.pk}", HTTP_ACCEPT=JSON)  # an anonymous copy is kept
    cases = [
        (client_for(customer), f"/api/books/{book.pk}", JSON),
        (anon_client, f"/api/books/{book.pk}", "text/html"),
        (anon_client, "/api/books/search?q=river", JSON),
    ]
    for client, url, accept in cases:
        kept_before = _kept()
        first, second, sql = _twice(client, url, HTTP_ACCEPT=accept)

        assert first.status_code == second.status_code == 200
        assert any("catalog_book" in s for s in sql)
        assert _kept() == kept_before


@pytest.mark.parametrize("budget", [0, 1])
def test_pages_larger_than_the_budget_are_rendered_every_time(
    anon_client: APIClient, make_book: Callable[..., Book], budget: int
) -> None:
    book = make_book()
    with override_settings(CATALOGUE_PAGE_CACHE_BYTES=budget):
        first, second, sql = _twice(anon_client, f"/api/books/{book.pk}")

    assert second.content == first.content
    assert any("catalog_book" in s for s in sql)


def test_the_oldest_pages_leave_first_when_the_budget_is_spent(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    books = [make_book(title=f"Book {n}", authors=["Ann River"]) for n in range(3)]
    size = len(anon_client.get(f"/api/books/{books[0].pk}").content)
    http.pages.clear()
    with override_settings(CATALOGUE_PAGE_CACHE_BYTES=2 * size + 10):  # two pages (titles are one size)
        for book in books:
            anon_client.get(f"/api/books/{book.pk}")
        rendered = {}
        for book in reversed(books):  # newest first: asking for the evicted one keeps it and evicts another
            with CaptureQueriesContext(connection) as queries:
                anon_client.get(f"/api/books/{book.pk}")
            rendered[book.pk] = len(queries) > 1

    assert rendered == {books[0].pk: True, books[1].pk: False, books[2].pk: False}
