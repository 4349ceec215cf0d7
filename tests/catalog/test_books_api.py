"""The catalogue over the HTTP API: filters, paging, staff writes, permissions and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.http import HttpResponse
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Author, Book
from catalog.services import book_update, catalogue_changed
from orders.models import Order
from orders.services import LineRequest, order_place
from tests.conftest import assert_problem, client_for

BOOKS = "/api/books"
SEARCH = "/api/books/search"
PROBLEM = "application/problem+json"
ISBN13 = "9780306406157"
ISBN10 = "0-306-40615-2"
OTHER_ISBN13 = "9780804429573"


def _detail(book_id: int) -> str:
    return f"{BOOKS}/{book_id}"


def _fields(body: dict) -> set[str]:
    return {error["field"] for error in body["errors"]}


def _ids(response: HttpResponse) -> list[int]:
    assert response.status_code == 200, response.content
    return [book["id"] for book in response.json()["results"]]


def _payload(**overrides: object) -> dict:
    payload = {
        "isbn": ISBN13,
        "title": "Reliable Software",
        "authors": ["Ada Lovelace", "Grace Hopper"],
        "description": "On keeping systems standing.",
        "price": "24.99",
        "stock": 7,
        "published_on": "2024-05-01",
    }
    payload.update(overrides)
    return payload


# --- listing and filters ----------------------------------------------------------------------


def test_book_list_returns_paginated_books(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(title="Alpha", authors=["Zoe Zed"], price="9.99", stock=3)

    response = anon_client.get(BOOKS)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["count"] == 1
    assert body["next"] is None
    assert body["previous"] is None
    assert body["results"] == [
        {
            "id": book.pk,
            "isbn": book.isbn,
            "title": "Alpha",
            "authors": [{"id": book.authors.get().pk, "name": "Zoe Zed"}],
            "description": "",
            "price": "9.99",
            "stock": 3,
            "published_on": None,
        }
    ]


def test_book_list_filters_by_author_id(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    wanted = make_book(authors=["Ursula K. Le Guin", "Someone Else"])
    make_book(authors=["Someone Else"])
    author = Author.objects.get(name="Ursula K. Le Guin")

    assert _ids(anon_client.get(BOOKS, {"author": str(author.pk)})) == [wanted.pk]


def test_book_list_filters_by_author_name_part_ignoring_case(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    wanted = make_book(authors=["Ursula K. Le Guin"])
    make_book(authors=["Octavia Butler"])

    assert _ids(anon_client.get(BOOKS, {"author": "le gu"})) == [wanted.pk]
    assert _ids(anon_client.get(BOOKS, {"author": "nobody"})) == []


def test_book_list_author_id_matches_only_that_author(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(authors=["Author 2024"])

    assert _ids(anon_client.get(BOOKS, {"author": "999999999"})) == []
    assert _ids(anon_client.get(BOOKS, {"author": "99999999999999999999999999"})) == []


@pytest.mark.parametrize("author", ["\u00b2", "\u0661\u0662", "\uff11"])
def test_book_list_treats_non_ascii_digits_as_a_name(
    anon_client: APIClient, make_book: Callable[..., Book], author: str
) -> None:
    make_book()

    assert _ids(anon_client.get(BOOKS, {"author": author})) == []


def test_book_list_filters_by_price_range_inclusive(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    cheap = make_book(price="5.00")
    middle = make_book(price="10.00")
    dear = make_book(price="20.00")

    assert _ids(anon_client.get(BOOKS, {"min_price": "10", "max_price": "10.00"})) == [middle.pk]
    assert set(_ids(anon_client.get(BOOKS, {"min_price": "6"}))) == {middle.pk, dear.pk}
    assert set(_ids(anon_client.get(BOOKS, {"max_price": "10"}))) == {cheap.pk, middle.pk}
    assert set(_ids(anon_client.get(BOOKS, {"min_price": "5", "max_price": "20"}))) == {
        cheap.pk,
        middle.pk,
        dear.pk,
    }


def test_book_list_filters_by_availability(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    available = make_book(stock=2)
    sold_out = make_book(stock=0)

    assert _ids(anon_client.get(BOOKS, {"in_stock": "true"})) == [available.pk]
    assert _ids(anon_client.get(BOOKS, {"in_stock": "false"})) == [sold_out.pk]
    assert _ids(anon_client.get(BOOKS, {"in_stock": "1"})) == [available.pk]
    assert _ids(anon_client.get(BOOKS, {"in_stock": "0"})) == [sold_out.pk]
    # Not asking about stock shows everything, sold-out books included.
    assert set(_ids(anon_client.get(BOOKS))) == {available.pk, sold_out.pk}


def test_book_list_combines_filters(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    wanted = make_book(authors=["Toni Morrison"], price="15.00", stock=1)
    make_book(authors=["Toni Morrison"], price="15.00", stock=0)
    make_book(authors=["Toni Morrison"], price="50.00", stock=1)
    make_book(authors=["Zadie Smith"], price="15.00", stock=1)

    response = anon_client.get(BOOKS, {"author": "morrison", "max_price": "20", "in_stock": "true"})

    assert _ids(response) == [wanted.pk]


def test_book_list_rejects_min_price_above_max_price(anon_client: APIClient, db: None) -> None:
    body = assert_problem(anon_client.get(BOOKS, {"min_price": "10", "max_price": "5"}), 400)

    assert _fields(body) == {"min_price"}


def test_book_list_orders_by_title_by_default(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    c = make_book(title="Cicero")
    a = make_book(title="Aeneid")
    b = make_book(title="Beowulf")

    assert _ids(anon_client.get(BOOKS)) == [a.pk, b.pk, c.pk]


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        ("title", ["Aeneid", "Beowulf", "Cicero"]),
        ("-title", ["Cicero", "Beowulf", "Aeneid"]),
        ("price", ["Beowulf", "Cicero", "Aeneid"]),
        ("-price", ["Aeneid", "Cicero", "Beowulf"]),
        ("published_on", ["Cicero", "Aeneid", "Beowulf"]),
        ("-published_on", ["Beowulf", "Aeneid", "Cicero"]),
        ("created", ["Aeneid", "Beowulf", "Cicero"]),
        ("-created", ["Cicero", "Beowulf", "Aeneid"]),
    ],
)
def test_book_list_ordering(
    anon_client: APIClient, make_book: Callable[..., Book], ordering: str, expected: list[str]
) -> None:
    make_book(title="Aeneid", price="30.00", published_on="2001-01-01")
    make_book(title="Beowulf", price="10.00", published_on="2002-01-01")
    make_book(title="Cicero", price="20.00", published_on="2000-01-01")

    response = anon_client.get(BOOKS, {"ordering": ordering})

    assert response.status_code == 200, response.content
    assert [book["title"] for book in response.json()["results"]] == expected


def _bulk_books(count: int) -> None:
    books = []
    for n in range(count):
        body = f"979{n:09d}"
        total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
        isbn = body + str((10 - total % 10) % 10)
        books.append(Book(isbn=isbn, title=f"Bulk {n:04d}", price=Decimal("1.00"), stock=1))
    Book.objects.bulk_create(books)
    catalogue_changed()  # bulk_create sends no signal


def test_book_list_paginates_with_page_size(anon_client: APIClient, db: None) -> None:
    _bulk_books(5)

    first = anon_client.get(BOOKS, {"page_size": 2})
    last = anon_client.get(BOOKS, {"page_size": 2, "page": 3})

    assert first.status_code == 200
    assert first.json()["count"] == 5
    assert [book["title"] for book in first.json()["results"]] == ["Bulk 0000", "Bulk 0001"]
    assert "page=2" in first.json()["next"]
    assert [book["title"] for book in last.json()["results"]] == ["Bulk 0004"]
    assert last.json()["next"] is None


def test_book_list_default_page_size_is_20(anon_client: APIClient, db: None) -> None:
    _bulk_books(21)

    assert len(_ids(anon_client.get(BOOKS))) == 20


def test_book_list_caps_page_size_at_100(anon_client: APIClient, db: None) -> None:
    _bulk_books(101)

    response = anon_client.get(BOOKS, {"page_size": 1000})

    assert len(_ids(response)) == 100
    assert response.json()["count"] == 101


@pytest.mark.parametrize("page_size", ["abc", "-1", "0", "", "1e3"])
def test_book_list_ignores_unusable_page_size(anon_client: APIClient, db: None, page_size: str) -> None:
    _bulk_books(21)

    response = anon_client.get(BOOKS, {"page_size": page_size})

    assert response.status_code == 200, response.content
    assert len(_ids(response)) == 20  # the default page, as if no size had been asked for
    assert response.json()["count"] == 21


def test_book_list_caps_a_page_size_beyond_any_integer_type(anon_client: APIClient, db: None) -> None:
    _bulk_books(101)

    response = anon_client.get(BOOKS, {"page_size": "99999999999999999999999"})

    assert response.status_code == 200, response.content
    assert len(_ids(response)) == 100


@pytest.mark.parametrize("page", ["0", "-1", "99", "abc", "1.5", "99999999999999999999999", "\x00"])
def test_book_list_answers_404_problem_for_a_page_that_does_not_exist(
    anon_client: APIClient, make_book: Callable[..., Book], page: str
) -> None:
    make_book()

    assert_problem(anon_client.get(BOOKS, {"page": page}), 404)


# --- detail -----------------------------------------------------------------------------------


def test_book_detail_returns_the_book(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(title="Dune", authors=["Frank Herbert"], price="8.00", stock=4, description="Sand.")

    response = anon_client.get(_detail(book.pk))

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == book.pk
    assert body["isbn"] == book.isbn
    assert body["title"] == "Dune"
    assert [author["name"] for author in body["authors"]] == ["Frank Herbert"]
    assert body["description"] == "Sand."
    assert body["price"] == "8.00"
    assert body["stock"] == 4


@pytest.mark.parametrize("book_id", ["999999", "0", str(2**63), "99999999999999999999999999"])
def test_book_detail_unknown_id_is_404_problem(anon_client: APIClient, db: None, book_id: str) -> None:
    body = assert_problem(anon_client.get(f"{BOOKS}/{book_id}"), 404)

    assert body["instance"] == f"{BOOKS}/{book_id}"


@pytest.mark.parametrize("path", [f"{BOOKS}/abc", f"{BOOKS}/-1", f"{BOOKS}/1/extra", "/api/bookz"])
def test_book_unknown_url_is_404_problem(anon_client: APIClient, db: None, path: str) -> None:
    assert_problem(anon_client.get(path), 404)


# --- staff writes -----------------------------------------------------------------------------


def test_book_create_stores_isbn10_as_isbn13(staff_client: APIClient) -> None:
    response = staff_client.post(BOOKS, _payload(isbn=ISBN10), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["isbn"] == ISBN13
    assert body["title"] == "Reliable Software"
    assert [author["name"] for author in body["authors"]] == ["Ada Lovelace", "Grace Hopper"]
    assert body["price"] == "24.99"
    assert body["stock"] == 7
    assert body["published_on"] == "2024-05-01"
    book = Book.objects.get(pk=body["id"])
    assert book.isbn == ISBN13
    assert book.authors_text == "Ada Lovelace, Grace Hopper"


def test_book_create_with_only_required_fields(staff_client: APIClient) -> None:
    response = staff_client.post(BOOKS, {"isbn": "080442957X", "title": "Minimal", "price": "0"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["isbn"] == "9780804429573"
    assert body["authors"] == []
    assert body["stock"] == 0
    assert body["description"] == ""
    assert body["published_on"] is None


def test_book_create_reuses_existing_authors(staff_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(authors=["Ada Lovelace"])

    response = staff_client.post(BOOKS, _payload(authors=["Ada Lovelace", "Ada Lovelace"]), format="json")

    assert response.status_code == 201, response.content
    assert Author.objects.filter(name="Ada Lovelace").count() == 1
    assert len(response.json()["authors"]) == 1


def test_book_create_accepts_form_data(staff_client: APIClient) -> None:
    response = staff_client.post(BOOKS, {"isbn": ISBN13, "title": "Form", "price": "3.50", "stock": "2"})

    assert response.status_code == 201, response.content
    assert Book.objects.get().stock == 2


def test_book_create_duplicate_isbn_is_409(staff_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(isbn=ISBN13, title="First")

    # The ISBN-10 spelling of the same book is the same book.
    body = assert_problem(staff_client.post(BOOKS, _payload(isbn=ISBN10, title="Second"), format="json"), 409)

    assert ISBN13 in body["detail"]
    assert list(Book.objects.values_list("title", flat=True)) == ["First"]
    assert not Author.objects.filter(name="Ada Lovelace").exists()


def test_book_update_replaces_every_field(staff_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(authors=["Old Author"], description="old")

    response = staff_client.put(
        _detail(book.pk),
        _payload(isbn=ISBN10, title="New", authors=["New Author"], price="1.00", stock=0, published_on=None),
        format="json",
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["isbn"] == ISBN13
    assert body["title"] == "New"
    assert [author["name"] for author in body["authors"]] == ["New Author"]
    book.refresh_from_db()
    assert (book.isbn, book.title, book.price, book.stock) == (ISBN13, "New", Decimal("1.00"), 0)
    assert book.published_on is None
    assert book.authors_text == "New Author"


def test_book_update_requires_the_required_fields(staff_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(title="Keep")

    body = assert_problem(staff_client.put(_detail(book.pk), {"title": "Only title"}, format="json"), 400)

    assert _fields(body) == {"isbn", "price", "authors", "description", "stock", "published_on"}
    assert {error["code"] for error in body["errors"]} == {"required"}
    book.refresh_from_db()
    assert book.title == "Keep"


@pytest.mark.parametrize(
    ("field", "empty", "stored"),
    [
        ("stock", 0, ("stock", 0)),
        ("authors", [], ("authors_text", "")),
        ("description", "", ("description", "")),
        ("published_on", None, ("published_on", None)),
    ],
)
def test_book_update_refuses_a_field_left_out_and_empties_one_sent_empty(
    staff_client: APIClient, make_book: Callable[..., Book], field: str, empty: object, stored: tuple[str, object]
) -> None:
    """PUT replaces the whole book: a field left out is an error, never a silent reset to its default."""
    book = make_book(title="Keep", authors=["Kept Author"], description="kept", stock=9, published_on=date(2001, 2, 3))
    payload = _payload(title="Changed")
    del payload[field]

    body = assert_problem(staff_client.put(_detail(book.pk), payload, format="json"), 400)

    assert [(error["field"], error["code"]) for error in body["errors"]] == [(field, "required")]
    book.refresh_from_db()
    assert (book.title, book.authors_text, book.description) == ("Keep", "Kept Author", "kept")
    assert (book.stock, book.published_on) == (9, date(2001, 2, 3))

    response = staff_client.put(_detail(book.pk), {**payload, field: empty}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()[field] == empty
    book.refresh_from_db()
    assert book.title == "Changed"
    assert getattr(book, stored[0]) == stored[1]


def test_book_update_with_form_data_needs_every_field_too(
    staff_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="Keep", stock=9)
    form = {"isbn": ISBN13, "title": "Form", "price": "3.50"}

    body = assert_problem(staff_client.put(_detail(book.pk), form, format="multipart"), 400)

    assert _fields(body) == {"authors", "description", "stock", "published_on"}
    book.refresh_from_db()
    assert (book.title, book.stock) == ("Keep", 9)


def test_book_partial_update_changes_only_given_fields(staff_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(title="Stay", authors=["Kept Author"], price="12.50", stock=3)

    response = staff_client.patch(_detail(book.pk), {"price": "9.00"}, format="json")

    assert response.status_code == 200, response.content
    book.refresh_from_db()
    assert book.price == Decimal("9.00")
    assert (book.title, book.stock, book.authors_text) == ("Stay", 3, "Kept Author")


def test_book_partial_update_keeps_the_stock_sold_since_the_book_was_read(
    customer: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=10, price="12.50")
    read_by_staff = Book.objects.get(pk=book.pk)
    order_place(user=customer, lines=[LineRequest(book_id=book.pk, quantity=3)])  # sold after that read

    updated = book_update(book=read_by_staff, price=Decimal("9.00"))

    assert (updated.price, updated.stock) == (Decimal("9.00"), 7)
    book.refresh_from_db()
    assert (book.price, book.stock) == (Decimal("9.00"), 7)


def test_book_partial_update_replaces_authors(staff_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(authors=["Old Author"])

    response = staff_client.patch(_detail(book.pk), {"authors": ["A New", "B New"]}, format="json")

    assert response.status_code == 200, response.content
    assert [author["name"] for author in response.json()["authors"]] == ["A New", "B New"]
    book.refresh_from_db()
    assert book.authors_text == "A New, B New"


def test_book_partial_update_to_a_taken_isbn_is_409(staff_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(isbn=ISBN13)
    book = make_book(isbn=OTHER_ISBN13)

    assert_problem(staff_client.patch(_detail(book.pk), {"isbn": ISBN10}, format="json"), 409)

    book.refresh_from_db()
    assert book.isbn == OTHER_ISBN13


def test_book_update_unknown_id_is_404(staff_client: APIClient) -> None:
    assert_problem(staff_client.put(_detail(999999), _payload(), format="json"), 404)
    assert_problem(staff_client.patch(_detail(999999), {"title": "x"}, format="json"), 404)
    assert_problem(staff_client.delete(_detail(999999)), 404)
    assert not Book.objects.exists()


def test_book_delete_removes_the_book(staff_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book()

    response = staff_client.delete(_detail(book.pk))

    assert response.status_code == 204
    assert response.content == b""
    assert not Book.objects.filter(pk=book.pk).exists()
    assert_problem(staff_client.get(_detail(book.pk)), 404)


def test_book_delete_of_an_ordered_book_is_409(
    staff_client: APIClient, customer: User, make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    order_place(user=customer, lines=[LineRequest(book_id=book.pk, quantity=1)])

    body = assert_problem(staff_client.delete(_detail(book.pk)), 409)

    assert body["type"].endswith("protected")
    assert Book.objects.filter(pk=book.pk).exists()
    assert Order.objects.count() == 1


# --- permissions ------------------------------------------------------------------------------

CLIENTS = ["anon_client", "customer_client", "suspended_client", "staff_client"]


@pytest.mark.parametrize("client_name", CLIENTS)
@pytest.mark.parametrize("endpoint", ["list", "search", "detail"])
def test_book_reads_are_public(
    request: pytest.FixtureRequest, make_book: Callable[..., Book], client_name: str, endpoint: str
) -> None:
    book = make_book(title="Public River")
    client: APIClient = request.getfixturevalue(client_name)
    url = {"list": BOOKS, "search": f"{SEARCH}?q=river", "detail": _detail(book.pk)}[endpoint]

    response = client.get(url)

    assert response.status_code == 200, response.content
    assert book.pk in ([b["id"] for b in response.json()["results"]] if endpoint != "detail" else [book.pk])


def _write(client: APIClient, method: str, book: Book) -> HttpResponse:
    if method == "post":
        return client.post(BOOKS, _payload(), format="json")
    if method == "put":
        return client.put(_detail(book.pk), _payload(title="Changed"), format="json")
    if method == "patch":
        return client.patch(_detail(book.pk), {"title": "Changed"}, format="json")
    return client.delete(_detail(book.pk))


WRITES = ["post", "put", "patch", "delete"]


@pytest.mark.parametrize("method", WRITES)
def test_book_writes_need_authentication(anon_client: APIClient, make_book: Callable[..., Book], method: str) -> None:
    book = make_book(title="Untouched")

    response = _write(anon_client, method, book)

    assert_problem(response, 401)
    assert response["WWW-Authenticate"].startswith("Token")
    assert list(Book.objects.values_list("title", flat=True)) == ["Untouched"]


@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("client_name", ["customer_client", "suspended_client"])
def test_book_writes_are_forbidden_to_customers(
    request: pytest.FixtureRequest, make_book: Callable[..., Book], client_name: str, method: str
) -> None:
    book = make_book(title="Untouched")
    client: APIClient = request.getfixturevalue(client_name)

    assert_problem(_write(client, method, book), 403)

    assert list(Book.objects.values_list("title", flat=True)) == ["Untouched"]


@pytest.mark.parametrize(("method", "status"), [("post", 201), ("put", 200), ("patch", 200), ("delete", 204)])
def test_book_writes_are_allowed_to_staff(
    staff_client: APIClient, make_book: Callable[..., Book], method: str, status: int
) -> None:
    book = make_book(title="Untouched")

    response = _write(staff_client, method, book)

    assert response.status_code == status, response.content


def test_book_writes_with_a_bad_token_are_401(make_book: Callable[..., Book]) -> None:
    book = make_book(title="Untouched")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    assert_problem(client.patch(_detail(book.pk), {"title": "Changed"}, format="json"), 401)

    book.refresh_from_db()
    assert book.title == "Untouched"


def test_book_writes_by_superuser_without_staff_role_are_allowed(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    admin = make_user()
    User.objects.filter(pk=admin.pk).update(is_superuser=True)
    book = make_book()

    response = client_for(admin).patch(_detail(book.pk), {"stock": 1}, format="json")

    assert response.status_code == 200, response.content


# --- bad input on every write endpoint --------------------------------------------------------

NUL = "\x00"
BAD_FIELDS: list[tuple[dict, str]] = [
    ({"isbn": "9780306406158"}, "isbn"),
    ({"isbn": "not an isbn"}, "isbn"),
    ({"isbn": "\u00b2" * 10}, "isbn"),
    ({"isbn": 12345}, "isbn"),
    ({"isbn": "9" * 21}, "isbn"),
    ({"isbn": None}, "isbn"),
    ({"isbn": ["9780306406157"]}, "isbn"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 301}, "title"),
    ({"title": ["a list"]}, "title"),
    ({"title": {"an": "object"}}, "title"),
    ({"title": None}, "title"),
    ({"title": f"Nul{NUL}byte"}, "title"),
    ({"description": f"nul {NUL}"}, "description"),
    ({"description": "x" * 20001}, "description"),
    ({"description": ["a"]}, "description"),
    ({"authors": "Ada Lovelace"}, "authors"),
    ({"authors": [f"Ada{NUL}"]}, "authors[0]"),
    ({"authors": [""]}, "authors[0]"),
    ({"authors": ["x" * 201]}, "authors[0]"),
    ({"authors": [["nested"]]}, "authors[0]"),
    ({"authors": [f"Author {n}" for n in range(21)]}, "authors"),
    ({"price": "-0.01"}, "price"),
    ({"price": -1}, "price"),
    ({"price": "abc"}, "price"),
    ({"price": "1e30"}, "price"),
    ({"price": 1e30}, "price"),
    ({"price": "100000000.00"}, "price"),
    ({"price": "1.001"}, "price"),
    ({"price": "NaN"}, "price"),
    ({"price": "Infinity"}, "price"),
    ({"price": "-Infinity"}, "price"),
    ({"price": None}, "price"),
    ({"price": True}, "price"),
    ({"price": f"1{NUL}"}, "price"),
    ({"price": "9" * 5000}, "price"),
    ({"stock": -1}, "stock"),
    ({"stock": "-1"}, "stock"),
    ({"stock": 1.5}, "stock"),
    ({"stock": 1e30}, "stock"),
    ({"stock": 10**30}, "stock"),
    ({"stock": 1_000_000_001}, "stock"),
    ({"stock": "many"}, "stock"),
    ({"stock": "9" * 5000}, "stock"),
    ({"stock": [1]}, "stock"),
    ({"stock": None}, "stock"),
    ({"published_on": "yesterday"}, "published_on"),
    ({"published_on": "2024-02-30"}, "published_on"),
    ({"published_on": "0000-01-01"}, "published_on"),
    ({"published_on": "99999-01-01"}, "published_on"),
    ({"published_on": 20240101}, "published_on"),
    ({"published_on": f"2024-01-01{NUL}"}, "published_on"),
]


def _bad_write(client: APIClient, method: str, book: Book, payload: object, **kwargs: object) -> HttpResponse:
    url = BOOKS if method == "post" else _detail(book.pk)
    return getattr(client, method)(url, payload, **kwargs)


@pytest.mark.parametrize("method", ["post", "put", "patch"])
@pytest.mark.parametrize(("override", "field"), BAD_FIELDS, ids=[repr(o)[:40] for o, _ in BAD_FIELDS])
def test_book_write_rejects_bad_field_with_problem_naming_it(
    staff_client: APIClient,
    make_book: Callable[..., Book],
    method: str,
    override: dict,
    field: str,
) -> None:
    book = make_book(isbn=OTHER_ISBN13, title="Untouched")
    payload = override if method == "patch" else _payload(**override)

    body = assert_problem(_bad_write(staff_client, method, book, payload, format="json"), 400)

    assert field in _fields(body), body
    assert body["detail"]
    for error in body["errors"]:
        assert set(error) == {"field", "code", "message"}
    book.refresh_from_db()
    assert book.title == "Untouched"
    assert Book.objects.count() == 1


@pytest.mark.parametrize("method", ["post", "put", "patch"])
@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"title": "x",}',
        b"not json at all",
        b'{"price": NaN}',
        b'{"price": Infinity}',
        b"\xff\xfe\x00",
        b"[" * 100_000,
        b'{"title": "' + b"\\u0000" * 3 + b'"',
    ],
    ids=["truncated", "trailing-comma", "text", "nan", "infinity", "bad-utf8", "deep-nesting", "unclosed"],
)
def test_book_write_rejects_malformed_json(
    staff_client: APIClient, make_book: Callable[..., Book], method: str, raw: bytes
) -> None:
    book = make_book(isbn=OTHER_ISBN13, title="Untouched")

    response = _bad_write(staff_client, method, book, raw, content_type="application/json")

    body = assert_problem(response, 400)
    assert body["type"].endswith("malformed-request")
    book.refresh_from_db()
    assert book.title == "Untouched"


@pytest.mark.parametrize("method", ["post", "put", "patch"])
@pytest.mark.parametrize("document", [[], [1, 2], "a string", 42, None, True])
def test_book_write_rejects_json_that_is_not_an_object(
    staff_client: APIClient, make_book: Callable[..., Book], method: str, document: object
) -> None:
    book = make_book(isbn=OTHER_ISBN13, title="Untouched")

    response = _bad_write(staff_client, method, book, json.dumps(document), content_type="application/json")

    assert response.status_code == 400, response.content
    assert response["Content-Type"] == PROBLEM
    assert Book.objects.count() == 1


@pytest.mark.parametrize("method", ["post", "put", "patch"])
@pytest.mark.parametrize("field", ["title", "description", "authors"])
def test_book_write_rejects_lone_surrogates(
    staff_client: APIClient, make_book: Callable[..., Book], method: str, field: str
) -> None:
    book = make_book(isbn=OTHER_ISBN13, title="Untouched")
    value = '["\\ud800"]' if field == "authors" else '"a \\ud800 b"'
    raw = json.dumps(_payload()).replace('"authors"', '"ignored"')
    raw = raw[:-1] + f', "{field}": {value}}}'

    body = assert_problem(_bad_write(staff_client, method, book, raw, content_type="application/json"), 400)

    assert any(name.startswith(field) for name in _fields(body)), body
    book.refresh_from_db()
    assert book.title == "Untouched"


@pytest.mark.parametrize(
    ("method", "required"),
    [
        ("post", {"isbn", "title", "price"}),
        ("put", {"isbn", "title", "authors", "description", "price", "stock", "published_on"}),
    ],
)
def test_book_write_names_every_missing_required_field(
    staff_client: APIClient, make_book: Callable[..., Book], method: str, required: set[str]
) -> None:
    book = make_book(isbn=OTHER_ISBN13)

    body = assert_problem(_bad_write(staff_client, method, book, {}, format="json"), 400)

    assert _fields(body) == required
    assert {error["code"] for error in body["errors"]} == {"required"}


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_book_write_rejects_oversize_body_with_413(
    staff_client: APIClient, make_book: Callable[..., Book], method: str
) -> None:
    book = make_book(isbn=OTHER_ISBN13, title="Untouched")
    payload = json.dumps(_payload(description="x" * 300_000))

    response = _bad_write(staff_client, method, book, payload, content_type="application/json")

    assert_problem(response, 413)
    book.refresh_from_db()
    assert book.title == "Untouched"
    assert Book.objects.count() == 1


@pytest.mark.parametrize("method", ["post", "put", "patch"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/x-yaml"])
def test_book_write_rejects_unsupported_media_type_with_415(
    staff_client: APIClient, make_book: Callable[..., Book], method: str, content_type: str
) -> None:
    book = make_book(isbn=OTHER_ISBN13, title="Untouched")

    response = _bad_write(staff_client, method, book, json.dumps(_payload()), content_type=content_type)

    assert_problem(response, 415)
    assert Book.objects.count() == 1


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        (BOOKS, {"min_price": "abc"}, "min_price"),
        (BOOKS, {"min_price": "-1"}, "min_price"),
        (BOOKS, {"max_price": "-0.01"}, "max_price"),
        (BOOKS, {"max_price": "1e30"}, "max_price"),
        (BOOKS, {"min_price": "NaN"}, "min_price"),
        (BOOKS, {"max_price": "Infinity"}, "max_price"),
        (BOOKS, {"min_price": "1.001"}, "min_price"),
        (BOOKS, {"min_price": "9" * 5000}, "min_price"),
        (BOOKS, {"min_price": NUL}, "min_price"),
        (BOOKS, {"in_stock": "maybe"}, "in_stock"),
        (BOOKS, {"in_stock": NUL}, "in_stock"),
        (BOOKS, {"ordering": "isbn"}, "ordering"),
        (BOOKS, {"ordering": "-stock"}, "ordering"),
        (BOOKS, {"ordering": "title; DROP TABLE catalog_book"}, "ordering"),
        (BOOKS, {"ordering": NUL}, "ordering"),
        (BOOKS, {"author": "x" * 201}, "author"),
        (BOOKS, {"author": f"Le{NUL}Guin"}, "author"),
        (SEARCH, {}, "q"),
        (SEARCH, {"q": ""}, "q"),
        (SEARCH, {"q": "   "}, "q"),
        (SEARCH, {"q": "x" * 201}, "q"),
        (SEARCH, {"q": f"river{NUL}"}, "q"),
    ],
)
def test_book_reads_reject_bad_query_params(
    anon_client: APIClient, db: None, url: str, params: dict, field: str
) -> None:
    body = assert_problem(anon_client.get(url, params), 400)

    assert field in _fields(body)


def test_book_list_ignores_unknown_query_params(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book()

    assert _ids(anon_client.get(BOOKS, {"colour": "blue", "in_stock": ""})) == [book.pk]


# --- database constraints back up the validation ----------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [{"stock": -1}, {"price": Decimal("-0.01")}, {"isbn": "0306406152"}, {"isbn": "97803064061X7"}],
    ids=["negative-stock", "negative-price", "isbn10", "isbn-letter"],
)
def test_book_check_constraints_reject_direct_updates(make_book: Callable[..., Book], changes: dict) -> None:
    book = make_book(stock=3, price="4.00")

    with pytest.raises(IntegrityError), transaction.atomic():
        Book.objects.filter(pk=book.pk).update(**changes)

    book.refresh_from_db()
    assert book.stock == 3
    assert book.price == Decimal("4.00")


def test_book_pages_show_exactly_what_the_declared_serializer_fields_describe(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    """BookOutput builds its dict by hand for speed; it must match DRF's own rendering of its fields."""
    from rest_framework import serializers

    from catalog.serializers import BookOutput

    books = [
        make_book(title="Zebra river", authors=["Zoe Zed", "Adam Ant", "Mia Mid"], price="7.50", stock=0),
        make_book(title="Alpha river", authors=[], price="1234567.05", published_on=date(1999, 12, 31)),
        make_book(title="Middle river", authors=["Adam Ant"], price="0", description="Rivers, mostly."),
    ]

    def generic(book: Book) -> dict:
        fresh = Book.objects.get(pk=book.pk)
        return json.loads(json.dumps(serializers.ModelSerializer.to_representation(BookOutput(), fresh)))

    expected = {book.pk: generic(book) for book in books}
    assert expected[books[0].pk]["authors"][0]["name"] == "Adam Ant"  # the Author ordering, by name
    listed = anon_client.get(BOOKS, {"ordering": "title"}).json()["results"]
    searched = anon_client.get("/api/books/search", {"q": "river"}).json()["results"]
    detailed = [anon_client.get(f"{BOOKS}/{book.pk}").json() for book in books]

    for shown in (listed, searched, detailed):
        assert {row["id"]: row for row in shown} == expected
