"""The project package as an app, so its system checks are registered."""

from __future__ import annotations

from django.apps import AppConfig


class BookstoreConfig(AppConfig):
    name = "bookstore"
    verbose_name = "Bookstore"

    def ready(self) -> None:
        from bookstore import checks  # noqa: F401 - registers the checks
