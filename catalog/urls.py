from __future__ import annotations

from django.urls import path

from catalog import api

urlpatterns = [
    path("books", api.BookListApi.as_view(), name="books-list"),
    path("books/search", api.BookSearchApi.as_view(), name="books-search"),
    path("books/<int:pk>", api.BookDetailApi.as_view(), name="books-detail"),
]
