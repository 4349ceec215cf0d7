"""HTTP caching of the public book pages: validators, 304s that render nothing, and who may share a copy."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.http import http_date
from rest_framework.test import APIClient

from accounts.models import User
from bookstore.cache_guard import SharedCacheGuardMiddleware
from catalog.models import Book, CatalogueVersion
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

JSON = "application/json"


def _pages(book: Book) -> list[str]:
    return ["/api/books", f"/api/books/{book.pk}", "/api/books/search?q=river"]


def _directives(response: object) -> set[str]:
    return {d.strip() for d in response["Cache-Control"].split(",")}  # type: ignore[index]


def _fresh(client: APIClient | Client, url: str, etag: str) -> dict:
    """GET the page with the copy's validator; assert it changed and return the new body."""
    response = client.get(url, HTTP_IF_NONE_MATCH=etag, HTTP_ACCEPT=JSON)
    assert response.status_code == 200
    assert response["ETag"] != etag
    return response.json()


def test_book_pages_answer_a_current_copy_with_304_from_the_version_row_alone(
    anon_client: APIClient, make_book: Callable[..., Book], django_assert_num_queries: Callable
) -> None:
    book = make_book(title="The River", authors=["Ann River"])
    for url in _pages(book):
        first = anon_client.get(url, HTTP_ACCEPT=JSON)
        assert first.status_code == 200
        assert _directives(first) == {"public", "max-age=5"}
        assert {"accept", "authorization"} <= {h.strip().lower() for h in first["Vary"].split(",")}

        with CaptureQueriesContext(connection) as queries, django_assert_num_queries(1):
            again = anon_client.get(url, HTTP_IF_NONE_MATCH=first["ETag"], HTTP_ACCEPT=JSON)

        assert again.status_code == 304
        assert again.content == b""
        assert again["ETag"] == first["ETag"]
        assert _directives(again) == {"public", "max-age=5"}
        assert "catalog_book" not in queries[0]["sql"]  # nothing of the page was read, so nothing rendered


def test_book_pages_show_a_staff_edit_over_the_api_at_once(
    anon_client: APIClient, staff_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River", price="10.00")
    etags = {url: anon_client.get(url)["ETag"] for url in _pages(book)}

    assert staff_client.patch(f"/api/books/{book.pk}", {"price": "11.00"}, format="json").status_code == 200

    for url, etag in etags.items():
        body = _fresh(anon_client, url, etag)
        shown = body["results"][0] if "results" in body else body
        assert shown["price"] == "11.00"


def test_book_list_counts_a_book_staff_add(
    anon_client: APIClient, staff_client: APIClient, make_book: Callable[..., Book]
) -> None:
    make_book(title="The River")
    before = anon_client.get("/api/books")
    assert before.json()["count"] == 1

    created = staff_client.post(
        "/api/books", {"isbn": "9780306406157", "title": "Other river", "price": "3.00"}, format="json"
    )
    assert created.status_code == 201

    assert _fresh(anon_client, "/api/books", before["ETag"])["count"] == 2
    searched = _fresh(anon_client, "/api/books/search?q=river", "x")
    assert {b["title"] for b in searched["results"]} == {"Other river", "The River"}


def test_book_pages_show_the_stock_an_order_takes_and_a_cancellation_returns(
    anon_client: APIClient, customer: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River", stock=5)
    customer_client = client_for(customer)
    etags = {url: anon_client.get(url)["ETag"] for url in _pages(book)}

    placed = customer_client.post("/api/orders", {"lines": [{"book_id": book.pk, "quantity": 2}]}, format="json")
    assert placed.status_code == 201

    after_order = {}
    for url, etag in etags.items():
        response = anon_client.get(url, HTTP_IF_NONE_MATCH=etag)
        assert response.status_code == 200
        shown = response.json()["results"][0] if "results" in response.json() else response.json()
        assert shown["stock"] == 3
        after_order[url] = response["ETag"]

    assert customer_client.post(f"/api/orders/{placed.json()['id']}/cancel").status_code == 200

    for url, etag in after_order.items():
        body = _fresh(anon_client, url, etag)
        assert (body["results"][0] if "results" in body else body)["stock"] == 5


def test_book_pages_show_an_admin_edit_at_once(
    anon_client: APIClient, staff: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River", price="10.00", stock=4)
    etag = anon_client.get(f"/api/books/{book.pk}")["ETag"]
    admin = Client()
    admin.force_login(staff)

    saved = admin.post(
        f"/admin/catalog/book/{book.pk}/change/",
        {
            "isbn": book.isbn,
            "title": "The River, revised",
            "authors": [a.pk for a in book.authors.all()],
            "description": "",
            "price": "10.00",
            "stock": "4",
            "published_on": "",
        },
    )
    assert saved.status_code == 302, saved.content

    assert _fresh(anon_client, f"/api/books/{book.pk}", etag)["title"] == "The River, revised"


def test_book_pages_answer_if_modified_since_once_the_last_change_has_settled(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River")
    url = f"/api/books/{book.pk}"
    assert "Last-Modified" not in anon_client.get(url)  # changed this second: a date could not tell copies apart
    an_hour_ago = timezone.now() - timezone.timedelta(hours=1)
    CatalogueVersion.objects.filter(pk=1).update(changed_at=an_hour_ago)

    first = anon_client.get(url)
    assert first["Last-Modified"] == http_date(int(an_hour_ago.timestamp()))
    assert anon_client.get(url, HTTP_IF_MODIFIED_SINCE=first["Last-Modified"]).status_code == 304
    assert anon_client.get(url, HTTP_IF_MODIFIED_SINCE=http_date(int(an_hour_ago.timestamp()) - 1)).status_code == 200

    Book.objects.get(pk=book.pk).save()  # any change bumps the version and its time
    assert anon_client.get(url, HTTP_IF_MODIFIED_SINCE=first["Last-Modified"]).status_code == 200


def test_book_pages_tag_each_media_type_apart(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book()
    as_json = anon_client.get(f"/api/books/{book.pk}", HTTP_ACCEPT=JSON)
    as_html = anon_client.get(f"/api/books/{book.pk}", HTTP_ACCEPT="text/html")

    assert as_json["ETag"] != as_html["ETag"]
    assert (
        anon_client.get(
            f"/api/books/{book.pk}", HTTP_ACCEPT="text/html", HTTP_IF_NONE_MATCH=as_json["ETag"]
        ).status_code
        == 200
    )


def test_book_pages_for_a_client_with_credentials_are_private_and_never_304(
    anon_client: APIClient, customer: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River")
    token_client = client_for(customer)
    session_client = APIClient()
    session_client.force_login(customer)
    for url in _pages(book):
        etag = anon_client.get(url)["ETag"]
        for client in (token_client, session_client):
            response = client.get(url, HTTP_IF_NONE_MATCH=etag)
            assert response.status_code == 200
            assert "public" not in response["Cache-Control"]
            assert "private" in response["Cache-Control"]
            assert "ETag" not in response


def test_an_anonymous_html_page_hands_out_no_cookie_a_shared_copy_could_spread(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    """The browsable API's HTML page, shared by a cache, must carry no one's cookie (bookstore/lean.py sets none)."""
    book = make_book()

    response = anon_client.get(f"/api/books/{book.pk}", HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    assert not response.cookies
    assert "public" in response["Cache-Control"]


def test_a_public_answer_that_sets_a_cookie_leaves_as_private(rf: RequestFactory) -> None:
    """Whatever view marks a page public, a cookie in it (one secret for everyone) makes it private."""

    def view(request: HttpRequest) -> HttpResponse:
        response = HttpResponse("page")
        response["Cache-Control"] = "public, max-age=5"
        response.set_cookie("csrftoken", "one-for-all")
        return response

    response = SharedCacheGuardMiddleware(view)(rf.get("/api/books/1"))

    assert "public" not in response["Cache-Control"]
    assert "private" in response["Cache-Control"]
