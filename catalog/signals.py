"""Every change to books or authors, however it is made (API, admin, shell), bumps the catalogue version.

Stock changes made with queryset.update() send no signal: orders.services calls catalogue_changed itself.
"""

from __future__ import annotations

from django.db.models.signals import m2m_changed, post_delete, post_save

from catalog.models import Author, Book
from catalog.services import catalogue_changed


def _changed(sender: type, **kwargs: object) -> None:
    if str(kwargs.get("action", "post_")).startswith("post_") and not kwargs.get("raw"):
        catalogue_changed()


def connect() -> None:
    for model in (Book, Author):
        post_save.connect(_changed, sender=model, dispatch_uid=f"catalogue-version-save-{model.__name__}")
        post_delete.connect(_changed, sender=model, dispatch_uid=f"catalogue-version-delete-{model.__name__}")
    m2m_changed.connect(_changed, sender=Book.authors.through, dispatch_uid="catalogue-version-authors")
