"""Writes on the catalogue (staff only at the API level)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from bookstore.exceptions import ApplicationError
from catalog.models import Author, Book, CatalogueVersion


class IsbnTaken(ApplicationError):
    status_code = 409
    slug = "isbn-taken"
    title = "ISBN already in the catalogue"


class BookInUse(ApplicationError):
    """Orders refer to the book, so it stays (the same problem type as any ProtectedError)."""

    status_code = 409
    slug = "protected"
    title = "Still referenced"


def _authors_by_name(names: Iterable[str]) -> list[Author]:
    """Return one Author per distinct name, creating the missing ones."""
    result = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        author = Author.objects.filter(name=name).order_by("id").first() or Author.objects.create(name=name)
        result.append(author)
    return result


@transaction.atomic
def book_create(
    *,
    isbn: str,
    title: str,
    price: Decimal,
    stock: int = 0,
    authors: Iterable[str] = (),
    description: str = "",
    published_on: date | None = None,
) -> Book:
    """Create a book and its authors; raise IsbnTaken if the ISBN exists."""
    try:
        with transaction.atomic():
            book = Book.objects.create(
                isbn=isbn,
                title=title,
                price=price,
                stock=stock,
                description=description,
                published_on=published_on,
            )
    except IntegrityError as e:
        raise IsbnTaken(f"A book with ISBN {isbn} already exists.") from e
    book.authors.set(_authors_by_name(authors))
    book.refresh_authors_text()
    return book


@transaction.atomic
def book_update(*, book: Book, authors: Iterable[str] | None = None, **fields: object) -> Book:
    """Update the given fields of a book (and its authors when given); leave every other column as it is."""
    for name, value in fields.items():
        setattr(book, name, value)
    try:
        with transaction.atomic():
            # Only the given columns: the instance was read earlier, and saving all of it would
            # put back the stock it saw, undoing every order placed since.
            book.save(update_fields=[*fields, "updated_at"])
    except IntegrityError as e:
        raise IsbnTaken(f"A book with ISBN {book.isbn} already exists.") from e
    if authors is not None:
        book.authors.set(_authors_by_name(authors))
        book.refresh_authors_text()
    book.refresh_from_db()  # show what is stored now, the stock orders left included
    return book


def book_delete(*, book: Book) -> None:
    """Delete a book; raise BookInUse if orders reference it."""
    try:
        with transaction.atomic():
            book.delete()
    except (ProtectedError, IntegrityError) as e:
        # IntegrityError: an order placed while the delete ran was not committed when Django looked
        # for orders, so only the database's foreign key, checked at commit, saw it.
        raise BookInUse("Orders refer to this book, so it cannot be deleted.", book_id=book.pk) from e


def catalogue_changed() -> None:
    """Bump the catalogue version, in the caller's transaction: call it in every write that changes a book page.

    An upsert, so a database whose row was emptied (a flushed test database) starts counting again.
    The row stays locked until the caller commits: writers on hot paths call this last.
    """
    table = connection.ops.quote_name(CatalogueVersion._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (id, number, changed_at) VALUES (1, 1, %s) "
            f"ON CONFLICT (id) DO UPDATE SET number = {table}.number + 1, changed_at = excluded.changed_at",
            [timezone.now()],
        )
