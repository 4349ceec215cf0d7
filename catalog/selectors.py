"""Reads on the catalogue."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db import connection, connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Case, Exists, IntegerField, OuterRef, Q, QuerySet, Value, When
from django.db.models.expressions import Expression
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from catalog.models import Author, Book, CatalogueVersion
from resilience.ops.faults import fault_point

ORDERINGS = {
    "title": ("title", "id"),
    "-title": ("-title", "-id"),
    "price": ("price", "id"),
    "-price": ("-price", "id"),
    "published_on": ("published_on", "id"),
    "-published_on": ("-published_on", "id"),
    "created": ("created_at", "id"),
    "-created": ("-created_at", "-id"),
}


# The columns of a book page, in the order page rows carry them (book_row below).
PAGE_COLUMNS = ("id", "isbn", "title", "description", "price", "stock", "published_on")
CENTS = Decimal("0.01")


def _reading() -> BaseDatabaseWrapper:
    """Return the connection catalogue reads use: a replica's where the router sends them (bookstore/routers.py)."""
    return connections[router.db_for_read(Book)]


def catalogue_version() -> tuple[int, datetime | None]:
    """Return the catalogue version's number and when it last changed (0, None before any change).

    A raw primary-key read: it runs on every public book page, and the ORM would triple its cost.
    """
    table = connection.ops.quote_name(CatalogueVersion._meta.db_table)
    with _reading().cursor() as cursor:
        cursor.execute(f"SELECT number, changed_at FROM {table} WHERE id = 1")
        row = cursor.fetchone()
    if row is None:
        return 0, None
    number, changed_at = row
    if isinstance(changed_at, str):  # SQLite hands a raw cursor text
        changed_at = parse_datetime(changed_at)
    if changed_at is not None and timezone.is_naive(changed_at):
        changed_at = timezone.make_aware(changed_at, UTC)
    return number, changed_at


def _authors_by_book(book_ids: list[int]) -> dict[int, list[dict[str, object]]]:
    """Return each book's authors, in the Author ordering, as the dicts a book page shows.

    One raw query for a whole page: no Author objects, no related managers, no ORM compilation
    (prefetch_related and then an ORM values() query were most of a page's CPU).
    """
    rows: dict[int, list[dict[str, object]]] = {pk: [] for pk in book_ids}
    if not book_ids:
        return rows
    qn = connection.ops.quote_name
    links, author = qn(Book.authors.through._meta.db_table), qn(Author._meta.db_table)
    with _reading().cursor() as cursor:
        cursor.execute(
            f"SELECT l.book_id, a.id, a.name FROM {links} l JOIN {author} a ON a.id = l.author_id "
            f"WHERE l.book_id IN ({', '.join(['%s'] * len(book_ids))}) ORDER BY a.name, a.id",
            book_ids,
        )
        for book_id, author_id, name in cursor.fetchall():
            rows[book_id].append({"id": author_id, "name": name})
    return rows


def book_row(
    pk: int,
    isbn: str,
    title: str,
    description: str,
    price: Decimal,
    stock: int,
    published_on: date | None,
    *,
    authors: list[dict[str, object]],
) -> dict[str, object]:
    """Return a book as the API shows it (the schema is BookOutput's declared fields)."""
    return {
        "id": pk,
        "isbn": isbn,
        "title": title,
        "authors": authors,
        "description": description,
        "price": f"{price.quantize(CENTS):f}",
        "stock": stock,
        "published_on": published_on.isoformat() if published_on is not None else None,
    }


def _typed(row: tuple) -> tuple:
    """Return a raw book row (PAGE_COLUMNS) with the types the ORM gives."""
    pk, isbn, title, description, price, stock, published_on = row
    if not isinstance(price, Decimal):  # SQLite hands a raw cursor a decimal as a float
        price = Decimal(str(price))
    if isinstance(published_on, str):
        published_on = date.fromisoformat(published_on)
    return pk, isbn, title, description, price, stock, published_on


class PageRows:
    """A queryset's book rows (PAGE_COLUMNS) by slice, for a paginator, from SQL compiled once per key.

    `key` must name the queryset (its view and validated filters): compiling the ORM query was half of
    what a list page's rows cost, and the same filters always compile to the same SQL.
    """

    _sql: dict[tuple, tuple[str, tuple]] = {}

    def __init__(self, queryset: QuerySet[Book], key: tuple) -> None:
        self.queryset, self.key = queryset.values_list(*PAGE_COLUMNS), key

    def count(self) -> int:
        return self.queryset.count()

    def __getitem__(self, page: slice) -> list[tuple]:
        compiled = self._sql.get(self.key)
        if compiled is None:
            if len(self._sql) >= 1024:  # bounded: filters are client input
                self._sql.clear()
            compiled = self._sql[self.key] = self.queryset.query.sql_with_params()
        sql, params = compiled
        with _reading().cursor() as cursor:
            cursor.execute(f"{sql} LIMIT %s OFFSET %s", [*params, page.stop - page.start, page.start])
            return [_typed(row) for row in cursor.fetchall()]


class SearchRows:
    """A full-text search's books by slice, for a paginator, as the API shows them (PostgreSQL only).

    One query gives a page its books, their authors and the number of matches (a window count over
    the ranked ids): building the ORM queryset, a separate count and a separate authors query were
    most of a search's own CPU. `near` is the slice the request asks for, so that count(), which the
    paginator calls first, fetches that page at once and the slice that follows reads it back.
    """

    def __init__(self, query: str, near: slice | None) -> None:
        fault_point("search")  # drills and tests can make search fail or crawl here
        self.query, self.near = query, near
        self._page: tuple[int, list[dict[str, object]]] | None = None  # (offset, rows) of the last fetch

    def _fetch(self, offset: int, limit: int) -> tuple[list[dict[str, object]], int]:
        with _reading().cursor() as cursor:
            cursor.execute(_search_sql(), [self.query, limit, offset])
            found = cursor.fetchall()
        rows = [book_row(*_typed(row[:7]), authors=row[8] or []) for row in found]
        self._page = (offset, rows)
        return rows, found[0][7] if found else 0

    def count(self) -> int:
        if self.near is not None:
            rows, total = self._fetch(self.near.start, self.near.stop - self.near.start)
            if rows or self.near.start == 0:
                return total
        # A page past the last one (the paginator answers 404), or "last": the number of matches alone.
        with _reading().cursor() as cursor:
            cursor.execute(_search_sql(count=True), [self.query])
            return int(cursor.fetchone()[0])

    def __getitem__(self, page: slice) -> list[dict[str, object]]:
        # On the last page the paginator's slice ends at the count: the fetched page holds just those rows.
        if self._page is not None and self._page[0] == page.start:
            return self._page[1]
        return self._fetch(page.start, page.stop - page.start)[0]


@functools.cache
def _search_sql(*, count: bool = False) -> str:
    """Return the SQL of a search page (params: query, limit, offset) or of its count (params: query)."""
    qn = connection.ops.quote_name
    book, links, author = (qn(m._meta.db_table) for m in (Book, Book.authors.through, Author))
    matches = f"FROM {book} s, websearch_to_tsquery('english', %s) q WHERE s.search_vector @@ q"
    if count:
        return f"SELECT count(*) {matches}"
    columns = ", ".join(f"b.{qn(c)}" for c in PAGE_COLUMNS)
    # Ranked and counted over the ids alone; the wide columns and the authors are read for the page's rows only,
    # joined and grouped (a subquery per row made the planner scan every author once per book).
    ranked = (
        f"SELECT s.id, ts_rank(s.search_vector, q) AS rank, count(*) OVER () AS total {matches} "
        "ORDER BY rank DESC, s.id LIMIT %s OFFSET %s"
    )
    return (
        f"SELECT {columns}, m.total, json_agg(json_build_object('id', a.id, 'name', a.name) ORDER BY a.name, a.id) "
        f"FILTER (WHERE a.id IS NOT NULL) FROM ({ranked}) m JOIN {book} b ON b.id = m.id "
        f"LEFT JOIN {links} l ON l.book_id = b.id LEFT JOIN {author} a ON a.id = l.author_id "
        "GROUP BY b.id, m.rank, m.total ORDER BY m.rank DESC, b.id"
    )


def book_page(rows: Iterable[tuple]) -> list[dict[str, object]]:
    """Return book rows (PAGE_COLUMNS) as the API shows them."""
    rows = list(rows)
    authors = _authors_by_book([row[0] for row in rows])
    return [book_row(*row, authors=authors[row[0]]) for row in rows]


def book_detail(*, pk: int) -> dict[str, object] | None:
    """Return one book as the API shows it, or None if there is no such book.

    One raw query, the authors joined in: the ORM's compilation was most of a book page's CPU.
    """
    qn = connection.ops.quote_name
    book, links, author = (qn(m._meta.db_table) for m in (Book, Book.authors.through, Author))
    columns = ", ".join(f"b.{qn(c)}" for c in PAGE_COLUMNS)
    with _reading().cursor() as cursor:
        cursor.execute(
            f"SELECT {columns}, a.id, a.name FROM {book} b LEFT JOIN {links} l ON l.book_id = b.id "
            f"LEFT JOIN {author} a ON a.id = l.author_id WHERE b.id = %s ORDER BY a.name, a.id",
            [pk],
        )
        rows = cursor.fetchall()
    if not rows:
        return None
    authors = [{"id": row[7], "name": row[8]} for row in rows if row[7] is not None]
    return book_row(*_typed(rows[0][:7]), authors=authors)


def book_list(
    *,
    author: str | None = None,
    min_price: Decimal | None = None,
    max_price: Decimal | None = None,
    in_stock: bool | None = None,
    ordering: str = "title",
) -> QuerySet[Book]:
    """Return books filtered by author (id or part of a name), price range and availability."""
    qs = Book.objects.all()
    if author:
        # ASCII only: str.isdigit() is also true for "²", which int() refuses.
        if author.isascii() and author.isdigit():
            # An EXISTS, not a join: no duplicate rows, so no DISTINCT (which would sort every
            # matching row on all its columns, description included, for each page).
            qs = qs.filter(Exists(Book.authors.through.objects.filter(book_id=OuterRef("pk"), author_id=int(author))))
        else:
            qs = qs.filter(authors_text__icontains=author)
    if min_price is not None:
        qs = qs.filter(price__gte=min_price)
    if max_price is not None:
        qs = qs.filter(price__lte=max_price)
    if in_stock is True:
        qs = qs.filter(stock__gt=0)
    elif in_stock is False:
        qs = qs.filter(stock=0)
    return qs.order_by(*ORDERINGS[ordering])


def book_search(*, query: str) -> QuerySet[Book]:
    """Return books matching a free-text query, best match first, on databases other than PostgreSQL.

    A substring match ranked by field (title, then authors, then description), so the embedded
    default still answers sensibly. On PostgreSQL the search is SearchRows: ranked full-text search
    over a GIN-indexed generated tsvector (title weight A, authors B, description C).
    """
    fault_point("search")  # drills and tests can make search fail or crawl here
    terms = [t for t in query.split() if t][:8]
    condition = Q()
    score: Expression = Value(0)
    for term in terms:
        condition &= Q(title__icontains=term) | Q(authors_text__icontains=term) | Q(description__icontains=term)
        score = score + Case(
            When(title__icontains=term, then=Value(3)),
            When(authors_text__icontains=term, then=Value(2)),
            default=Value(1),
            output_field=IntegerField(),
        )
    return Book.objects.filter(condition).annotate(rank=score).order_by("-rank", "id")
