from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers
from rest_framework.fields import empty

from catalog.isbn import InvalidIsbn, normalize_isbn
from catalog.models import Author, Book
from catalog.selectors import ORDERINGS, PAGE_COLUMNS, book_row

MAX_PRICE = Decimal("99999999.99")


class IsbnField(serializers.CharField):
    """Accept ISBN-10 or ISBN-13 with hyphens or spaces; store ISBN-13."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 20)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        text = super().to_internal_value(data)
        try:
            return normalize_isbn(text)
        except InvalidIsbn as e:
            raise serializers.ValidationError(str(e), code="invalid_isbn") from e


class AuthorOutput(serializers.ModelSerializer):
    class Meta:
        model = Author
        fields = ["id", "name"]


class BookOutput(serializers.ModelSerializer):
    """A book as the API shows it.

    The declared fields define the schema; the dict itself is selectors.book_row's, which the read
    pages build from plain rows. Book pages are the shop's hottest responses, and DRF's per-field
    machinery was most of their CPU. tests/catalog/test_books_api.py checks the two agree.
    """

    authors = AuthorOutput(many=True, read_only=True)

    class Meta:
        model = Book
        fields = ["id", "isbn", "title", "authors", "description", "price", "stock", "published_on"]
        read_only_fields = fields

    def to_representation(self, book: Book) -> dict[str, Any]:
        authors = [{"id": a.pk, "name": a.name} for a in book.authors.all()]
        return book_row(*(getattr(book, name) for name in PAGE_COLUMNS), authors=authors)


class BookInput(serializers.Serializer):
    """A book as staff create it (POST: left-out optional fields take their defaults) or edit part of it (PATCH)."""

    isbn = IsbnField()
    title = serializers.CharField(max_length=300)
    authors = serializers.ListField(
        child=serializers.CharField(max_length=200), max_length=20, required=False, default=list
    )
    description = serializers.CharField(max_length=20000, required=False, allow_blank=True, default="")
    price = serializers.DecimalField(max_digits=10, decimal_places=2, min_value=Decimal("0"), max_value=MAX_PRICE)
    stock = serializers.IntegerField(min_value=0, max_value=1_000_000_000, required=False, default=0)
    published_on = serializers.DateField(required=False, allow_null=True, default=None)


class BookReplaceInput(BookInput):
    """A whole book, for PUT: every field is required, so a field left out is a 400, never a silent reset.

    Empty is still a value: `"authors": []` removes the authors, `"description": ""` the
    description, `"published_on": null` the date, and `"stock": 0` says no copies are left.
    """

    def get_fields(self) -> dict[str, serializers.Field]:
        # The fields and their bounds are BookInput's own; only "required" differs.
        fields = super().get_fields()
        for field in fields.values():
            field.required = True
            field.default = empty
        return fields


class BookListFilter(serializers.Serializer):
    author = serializers.CharField(required=False, max_length=200, help_text="Author id, or part of a name.")
    min_price = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=Decimal("0"), max_value=MAX_PRICE, required=False
    )
    max_price = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=Decimal("0"), max_value=MAX_PRICE, required=False
    )
    in_stock = serializers.BooleanField(required=False, allow_null=True, default=None)
    ordering = serializers.ChoiceField(choices=list(ORDERINGS), required=False, default="title")

    def validate(self, attrs: dict) -> dict:
        low, high = attrs.get("min_price"), attrs.get("max_price")
        if low is not None and high is not None and low > high:
            raise serializers.ValidationError({"min_price": "min_price must not exceed max_price."})
        return attrs


class BookSearchInput(serializers.Serializer):
    q = serializers.CharField(max_length=200, help_text="Words to look for in titles, authors, descriptions.")
