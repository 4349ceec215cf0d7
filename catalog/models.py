"""Authors and books."""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from catalog.isbn import InvalidIsbn, normalize_isbn


def validate_isbn13(value: str) -> None:
    """Raise ValidationError unless value is a canonical ISBN-13."""
    try:
        if normalize_isbn(value) != value:
            raise ValidationError("Store the ISBN-13 form.", code="isbn")
    except InvalidIsbn as e:
        raise ValidationError(str(e), code="isbn") from e


class Author(models.Model):
    name = models.CharField(max_length=200, db_index=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class BookQuerySet(models.QuerySet["Book"]):
    def in_stock(self) -> BookQuerySet:
        return self.filter(stock__gt=0)


class Book(models.Model):
    isbn = models.CharField(
        "ISBN-13",
        max_length=13,
        unique=True,
        validators=[validate_isbn13],
        help_text="13 digits, no hyphens.",
    )
    title = models.CharField(max_length=300)
    authors = models.ManyToManyField(Author, related_name="books", blank=True)
    # Author names denormalised so full-text search and listing need no join.
    authors_text = models.CharField(max_length=1000, blank=True, default="", editable=False)
    description = models.TextField(blank=True, default="")
    price = models.DecimalField(
        max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))], help_text=">= 0"
    )
    stock = models.PositiveIntegerField(default=0, help_text="Copies available; never below 0.")
    published_on = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = BookQuerySet.as_manager()

    class Meta:
        ordering = ["title", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(stock__gte=0), name="book_stock_non_negative"),
            models.CheckConstraint(condition=models.Q(price__gte=0), name="book_price_non_negative"),
            models.CheckConstraint(condition=models.Q(isbn__regex=r"^97[89][0-9]{10}$"), name="book_isbn13"),
        ]
        # One index per list ordering: a page is read from the index, not sorted from every book.
        indexes = [
            models.Index(fields=["title", "id"], name="book_title_id"),
            models.Index(fields=["price", "id"], name="book_price_id"),
            models.Index(fields=["published_on", "id"], name="book_published_id"),
            models.Index(fields=["created_at", "id"], name="book_created_id"),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.isbn})"

    def refresh_authors_text(self) -> None:
        """Recompute the denormalised author names from the M2M relation and save them."""
        names = ", ".join(self.authors.order_by("name").values_list("name", flat=True))
        Book.objects.filter(pk=self.pk).update(authors_text=names[:1000])
        self.authors_text = names[:1000]


class CatalogueVersion(models.Model):
    """One row whose number grows with every committed change to what the catalogue shows.

    Written in the same transaction as the change (so a reader that sees the new number also sees
    the change), it makes the validators of the public book pages (catalog/http.py): one primary-key
    read tells whether a client's copy is still current. Orders and cancellations bump it as their
    last statement, so the row lock is held only for the commit.
    """

    number = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"catalogue version {self.number}"
