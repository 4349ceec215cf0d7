"""API calls without a session cookie skip sessions, CSRF and messages; signed-in browsers and the admin keep them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.test import Client

from accounts.models import User
from accounts.services import token_create
from bookstore.checks import csrf_middleware_installed
from catalog.models import Book

ME = "/api/accounts/me"
BOOKS = "/api/books"
NEW_BOOK = {"title": "Lean", "isbn": "9780306406157", "price": "10.00", "stock": 1, "authors": ["A. Author"]}


def test_an_api_call_without_a_session_cookie_sets_no_cookie_and_does_not_vary_on_cookies(
    make_book: Callable[..., Book], make_user: Callable[..., User]
) -> None:
    make_book()
    token = token_create(user=make_user()).token

    for response in (Client().get(BOOKS), Client().get(ME, HTTP_AUTHORIZATION=f"Token {token}")):
        assert response.status_code == 200
        assert not response.cookies  # no session, no CSRF cookie handed to API clients
        assert "Cookie" not in response.get("Vary", "")  # a shared cache may keep a public answer


def test_a_browser_signed_in_with_a_session_still_uses_it_on_the_api_and_csrf_still_guards_it(
    make_user: Callable[..., User],
) -> None:
    staff = make_user(role=User.Role.STAFF)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff)

    me = browser.get(ME)
    assert me.status_code == 200
    assert me.json()["username"] == staff.username

    # The session is an ambient credential: a cross-site form could send it, so CSRF applies.
    forged = browser.post(BOOKS, json.dumps(NEW_BOOK), content_type="application/json")
    assert forged.status_code == 403
    assert not Book.objects.filter(isbn=NEW_BOOK["isbn"]).exists()


def test_the_admin_keeps_sessions_messages_and_csrf(make_user: Callable[..., User]) -> None:
    staff = make_user(role=User.Role.STAFF, password="pw-long-enough-1")
    browser = Client(enforce_csrf_checks=True)

    assert (
        browser.post("/admin/login/", {"username": staff.username, "password": "pw-long-enough-1"}).status_code == 403
    )
    page = browser.get("/admin/login/")
    signed_in = browser.post(
        "/admin/login/",
        {"username": staff.username, "password": "pw-long-enough-1", "csrfmiddlewaretoken": page.context["csrf_token"]},
    )
    assert signed_in.status_code == 302
    assert browser.get("/admin/").status_code == 200


def test_the_deploy_check_still_wants_csrf_middleware(settings: Any) -> None:
    assert csrf_middleware_installed(None) == []
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "Csrf" not in m]

    assert [w.id for w in csrf_middleware_installed(None)] == ["bookstore.W003"]
