"""The demo data command: the project's, since it spans accounts, the catalogue and orders."""

from __future__ import annotations

import ast
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.management import call_command, get_commands

from accounts.models import User
from catalog.models import Author, Book
from orders.models import Order
from orders.services import LineRequest, order_place

ROOT = Path(__file__).resolve().parent.parent.parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_catalog_imports_nothing_from_orders() -> None:
    importers = {
        str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path) if m.split(".")[0] == "orders")
        for path in (ROOT / "catalog").rglob("*.py")
    }
    assert {path: mods for path, mods in importers.items() if mods} == {}


def test_demo_data_is_the_demo_apps_command() -> None:
    assert get_commands()["demo_data"] == "demo"


@pytest.mark.django_db
def test_demo_data_creates_books_and_the_demo_accounts() -> None:
    out = io.StringIO()
    call_command("demo_data", books=12, seed=3, stdout=out)
    assert Book.objects.count() == 12
    assert User.objects.get(username="staff").check_password("bookstore-staff")
    assert User.objects.get(username="reader").check_password("bookstore-reader")
    assert "12 books" in out.getvalue()


@pytest.mark.django_db
def test_demo_data_reset_deletes_orders_before_the_books_they_protect(
    make_user: Callable[..., User], make_book: Callable[..., Book]
) -> None:
    book = make_book(stock=5)
    order_place(user=make_user(), lines=[LineRequest(book_id=book.pk, quantity=1)])
    call_command("demo_data", books=4, seed=3, reset=True, stdout=io.StringIO())
    assert not Order.objects.exists()
    assert not Book.objects.filter(pk=book.pk).exists()
    assert Book.objects.count() == 4
    assert Author.objects.exists()
