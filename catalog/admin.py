from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from catalog.models import Author, Book


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):
    list_display = ["name", "book_count"]
    search_fields = ["name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Author]:
        return super().get_queryset(request).annotate(book_count=Count("books"))

    @admin.display(ordering="book_count", description="books")
    def book_count(self, obj: Author) -> int:
        return obj.book_count  # type: ignore[attr-defined]  # annotated by get_queryset


@admin.register(Book)
class BookAdmin(admin.ModelAdmin):
    list_display = ["title", "isbn", "authors_text", "price", "stock", "published_on"]
    list_filter = ["published_on"]
    search_fields = ["title", "isbn", "authors_text"]
    autocomplete_fields = ["authors"]
    readonly_fields = ["authors_text", "created_at", "updated_at"]
    list_per_page = 50
    show_full_result_count = False  # COUNT(*) over 100k books on every page view is wasted work

    def save_related(self, request: HttpRequest, form: ModelForm[Book], formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        form.instance.refresh_authors_text()
