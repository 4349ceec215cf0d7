"""Reads on the catalogue."""

from __future__ import annotations

from decimal import Decimal

from django.db import connection
from django.db.models import BooleanField, Case, Exists, FloatField, IntegerField, OuterRef, Q, QuerySet, Value, When
from django.db.models.expressions import Expression, RawSQL

from catalog.models import Book
from resilience.faults import fault_point

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


def attach_authors(books: list[Book]) -> list[Book]:
    """Give each book its authors, in the Author ordering, as `author_rows` for BookOutput.

    One values() query for the whole page: no Author objects, no per-book related manager
    (prefetch_related builds both, and they were most of a book page's CPU). Called on the page
    itself, so books skipped by the pagination cost nothing.
    """
    rows: dict[int, list[dict[str, object]]] = {book.pk: [] for book in books}
    if rows:
        links = (
            Book.authors.through.objects.filter(book_id__in=list(rows))
            .order_by("author__name", "author_id")
            .values_list("book_id", "author_id", "author__name")
        )
        for book_id, author_id, name in links:
            rows[book_id].append({"id": author_id, "name": name})
    for book in books:
        book.author_rows = rows[book.pk]  # type: ignore[attr-defined]  # read by BookOutput, not a column
    return books


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
    """Return books matching a free-text query, best match first.

    On PostgreSQL this is ranked full-text search over a GIN-indexed generated tsvector
    (title weight A, authors B, description C). Elsewhere it is a substring match ranked by
    the same field order, so the embedded default still answers sensibly.
    """
    fault_point("search")  # drills and tests can make search fail or crawl here
    qs = Book.objects.all()
    if connection.vendor == "postgresql":
        tsquery = "websearch_to_tsquery('english', %s)"
        return (
            qs.alias(matches=RawSQL(f"search_vector @@ {tsquery}", [query], output_field=BooleanField()))
            .filter(matches=True)
            .annotate(rank=RawSQL(f"ts_rank(search_vector, {tsquery})", [query], output_field=FloatField()))
            .order_by("-rank", "id")
        )
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
    return qs.filter(condition).annotate(rank=score).order_by("-rank", "id")
