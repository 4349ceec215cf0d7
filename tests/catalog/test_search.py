"""Ranked full-text search over the GIN-indexed generated tsvector (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from django.db import connection
from django.http import HttpResponse
from rest_framework.test import APIClient

from catalog.models import Book
from catalog.selectors import _search_sql
from catalog.services import book_update

SEARCH = "/api/books/search"
PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def _postgresql(db: None) -> None:
    if connection.vendor != "postgresql":
        pytest.fail("full-text search is PostgreSQL only: run the suite with DATABASE_URL=postgres://...")


def _titles(response: HttpResponse) -> list[str]:
    assert response.status_code == 200, response.content
    return [book["title"] for book in response.json()["results"]]


def _search(client: APIClient, q: str, **params: object) -> list[str]:
    return _titles(client.get(SEARCH, {"q": q, **params}))


def test_book_search_ranks_title_above_author_above_description(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    # Created worst match first, so insertion order cannot explain the result.
    make_book(title="A Quiet Coast", description="Nights spent in the old lighthouse.")
    make_book(title="Collected Poems", authors=["Mara Lighthouse"])
    make_book(title="The Lighthouse", description="A novel.")
    make_book(title="Unrelated", description="Nothing to see here.")

    assert _search(anon_client, "lighthouse") == ["The Lighthouse", "Collected Poems", "A Quiet Coast"]


def test_book_search_ranks_title_above_description_when_both_mention_it(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    make_book(title="Field Notes", description="On whales, and more whales, and whales again.")
    make_book(title="Whales", description="Field notes.")

    assert _search(anon_client, "whales")[0] == "Whales"


def test_book_search_stems_words(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(title="The River")
    make_book(title="Running Uphill")

    assert _search(anon_client, "rivers") == ["The River"]
    assert _search(anon_client, "runs") == ["Running Uphill"]


def test_book_search_ignores_case_and_punctuation(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(title="Gödel, Escher, Bach")

    assert _search(anon_client, "ESCHER!") == ["Gödel, Escher, Bach"]
    assert _search(anon_client, "gödel") == ["Gödel, Escher, Bach"]


def test_book_search_needs_every_word(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(title="Red River")
    make_book(title="Blue River")

    assert _search(anon_client, "red river") == ["Red River"]
    assert sorted(_search(anon_client, "river")) == ["Blue River", "Red River"]


def test_book_search_supports_web_search_syntax(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(title="Red River")
    make_book(title="Blue River")

    assert _search(anon_client, "river -red") == ["Blue River"]
    assert sorted(_search(anon_client, "red or blue")) == ["Blue River", "Red River"]
    assert _search(anon_client, '"blue river"') == ["Blue River"]


def test_book_search_with_no_match_is_empty(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(title="The River")

    response = anon_client.get(SEARCH, {"q": "zeppelin"})

    assert response.status_code == 200
    assert response.json() == {"count": 0, "next": None, "previous": None, "results": []}


@pytest.mark.parametrize("q", ["the", "!!!", "&|!():*", "'", '"', "-", "<->", "a & (b"])
def test_book_search_with_only_stop_words_or_operators_is_empty_not_an_error(
    anon_client: APIClient, make_book: Callable[..., Book], q: str
) -> None:
    make_book(title="The River")

    assert _search(anon_client, q) == []


def test_book_search_finds_out_of_stock_books(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    make_book(title="The River", stock=0)

    assert _search(anon_client, "river") == ["The River"]


def test_book_search_is_paginated(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    for n in range(3):
        make_book(title=f"River {n}")

    response = anon_client.get(SEARCH, {"q": "river", "page_size": 2})

    assert response.status_code == 200
    assert response.json()["count"] == 3
    assert len(response.json()["results"]) == 2
    assert "page=2" in response.json()["next"]


def test_book_search_without_q_is_400(anon_client: APIClient) -> None:
    response = anon_client.get(SEARCH)

    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    assert [error["field"] for error in response.json()["errors"]] == ["q"]
    assert response.json()["errors"][0]["code"] == "required"


@pytest.mark.parametrize("q", ["x" * 201, "river " * 40])
def test_book_search_with_too_long_q_is_400(anon_client: APIClient, q: str) -> None:
    response = anon_client.get(SEARCH, {"q": q})

    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    assert response.json()["errors"][0]["field"] == "q"
    assert response.json()["errors"][0]["code"] == "max_length"


def test_book_search_accepts_q_of_exactly_200_characters(anon_client: APIClient) -> None:
    assert _search(anon_client, "x" * 200) == []


def test_book_search_gin_index_exists() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'catalog_book' AND indexname = %s",
            ["catalog_book_search_gin"],
        )
        rows = cursor.fetchall()

    assert len(rows) == 1
    assert "USING gin (search_vector)" in rows[0][0]


def test_book_search_vector_is_a_generated_column() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT is_generated, data_type FROM information_schema.columns "
            "WHERE table_name = 'catalog_book' AND column_name = 'search_vector'"
        )
        assert cursor.fetchall() == [("ALWAYS", "tsvector")]


def test_book_search_uses_the_gin_index() -> None:
    with connection.cursor() as cursor:
        # Tiny test tables make a sequential scan cheaper; ask the planner what it would do otherwise.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {_search_sql()}", ["river", 20, 0])
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "catalog_book_search_gin" in plan


def test_book_search_follows_a_title_update(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(title="The River")

    book_update(book=book, title="The Mountain")

    assert _search(anon_client, "river") == []
    assert _search(anon_client, "mountain") == ["The Mountain"]


def test_book_search_follows_an_update_through_the_api(
    anon_client: APIClient, staff_client: APIClient, make_book: Callable[..., Book]
) -> None:
    book = make_book(title="The River", authors=["Old Name"])

    response = staff_client.patch(
        f"/api/books/{book.pk}",
        {"title": "The Mountain", "authors": ["Wislawa Szymborska"], "description": "Glaciers."},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert _search(anon_client, "river") == []
    assert _search(anon_client, "mountain") == ["The Mountain"]
    assert _search(anon_client, "szymborska") == ["The Mountain"]
    assert _search(anon_client, "glacier") == ["The Mountain"]
    assert _search(anon_client, "old name") == []


def test_book_search_follows_a_queryset_update(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    book = make_book(title="The River")

    Book.objects.filter(pk=book.pk).update(description="A walk through the marshes.")

    assert _search(anon_client, "marsh") == ["The River"]


def test_book_search_finds_bulk_created_books(anon_client: APIClient, db: None) -> None:
    Book.objects.bulk_create(
        [
            Book(isbn="9780306406157", title="Bulk Harbour", price=Decimal("1.00"), authors_text="Ann Bulk"),
            Book(isbn="9780804429573", title="Other", description="harbours at dusk", price=Decimal("2.00")),
        ]
    )

    assert _search(anon_client, "harbour") == ["Bulk Harbour", "Other"]
    assert _search(anon_client, "ann") == ["Bulk Harbour"]


def test_book_search_pages_keep_the_rank_order_across_pages(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    make_book(title="River", description="river river")
    for n in range(4):
        make_book(title=f"Lake {n}", description="a river")
    whole = _search(anon_client, "river", page_size=10)

    pages = [_search(anon_client, "river", page_size=2, page=n) for n in (1, 2, 3)]

    assert whole[0] == "River"
    assert [title for page in pages for title in page] == whole
    assert [len(page) for page in pages] == [2, 2, 1]


def test_book_search_last_page_is_short_and_has_no_next(anon_client: APIClient, make_book: Callable[..., Book]) -> None:
    for n in range(5):
        make_book(title=f"River {n}")

    last = anon_client.get(SEARCH, {"q": "river", "page_size": 2, "page": 3}).json()

    assert (last["count"], len(last["results"]), last["next"]) == (5, 1, None)
    assert "page=2" in last["previous"]
    assert anon_client.get(SEARCH, {"q": "river", "page_size": 2, "page": "last"}).json() == last


@pytest.mark.parametrize("page", ["4", "0", "-1", "abc", "2.0", str(10**30), str(2**63 - 1)])
def test_book_search_page_past_the_last_or_not_a_number_is_404(
    anon_client: APIClient, make_book: Callable[..., Book], page: str
) -> None:
    for n in range(5):
        make_book(title=f"River {n}")

    response = anon_client.get(SEARCH, {"q": "river", "page_size": 2, "page": page})

    assert response.status_code == 404
    assert response["Content-Type"] == PROBLEM
    assert response.json()["detail"] == "Invalid page."


def test_book_search_with_no_match_has_an_empty_first_page_and_no_second(anon_client: APIClient, db: None) -> None:
    empty = anon_client.get(SEARCH, {"q": "nothing"})

    assert empty.json() == {"count": 0, "next": None, "previous": None, "results": []}
    assert anon_client.get(SEARCH, {"q": "nothing", "page": "last"}).json() == empty.json()
    assert anon_client.get(SEARCH, {"q": "nothing", "page": 2}).status_code == 404


def test_book_search_shows_each_book_with_its_authors_in_name_order(
    anon_client: APIClient, make_book: Callable[..., Book]
) -> None:
    make_book(title="River", authors=["Zadie Smith", "Ann Patchett"])
    make_book(title="Lake", description="river", authors=[])

    results = anon_client.get(SEARCH, {"q": "river"}).json()["results"]

    assert [[a["name"] for a in book["authors"]] for book in results] == [["Ann Patchett", "Zadie Smith"], []]
