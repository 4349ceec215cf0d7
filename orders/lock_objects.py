"""Row-lock helpers. Every path that locks books goes through here, always in primary-key order."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet

from catalog.models import Book


def books_select_for_update(book_ids: Iterable[int]) -> QuerySet[Book]:
    """Return the books locked FOR UPDATE in primary-key order.

    Two orders over the same books in opposite line order then queue on the first shared row
    instead of deadlocking. The lock is FOR NO KEY UPDATE: stock changes never touch the key, and
    unlike FOR UPDATE it does not conflict with the KEY SHARE lock that inserting an order line
    (a foreign key to the book) takes, so a transaction that wrote its lines first can still lock.
    Must be evaluated inside a transaction.
    """
    return Book.objects.filter(pk__in=sorted(set(book_ids))).order_by("pk").select_for_update(of=("self",), no_key=True)
