"""The stale fallback serves only public responses, and only to requests that would have got the same.

Each test fills the breaker's store while it is closed, from several clients, then forces the
breaker open and asks again from each: whatever comes back is either the breaker's 503 or a copy
of what an anonymous client was served, and then only to an anonymous client.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Book
from orders.services import LineRequest, order_place
from resilience import services
from resilience.engine.breaker import State
from resilience.models import CircuitBreakerPolicy
from resilience.runtime import get_runtime
from tests.conftest import client_for

REDUCED_CAPACITY = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
ORDERS, ME, BOOKS = "/api/orders", "/api/accounts/me", "/api/books"
JSON = {"HTTP_ACCEPT": "application/json"}

_names = itertools.count(1)


def stale_breaker(pattern: str) -> CircuitBreakerPolicy:
    """Create a stale-fallback breaker on a path prefix and make this process see it at once."""
    policy = CircuitBreakerPolicy(
        name=f"stale-{next(_names)}",
        match_type="prefix",
        pattern=pattern,
        failure_statuses="500-599",
        fallback="stale",
        stale_max_age=300,
    )
    policy.full_clean()
    policy.save()
    get_runtime().invalidate()
    return policy


def force_open(policy: CircuitBreakerPolicy) -> None:
    services.breaker_force(names=[policy.name], state=State.FORCED_OPEN)


def assert_breaker_503(response: HttpResponse) -> None:
    assert response.status_code == 503, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == REDUCED_CAPACITY
    assert "X-Stale-Response" not in response


def is_stale(response: HttpResponse) -> bool:
    return "X-Stale-Response" in response


@pytest.fixture
def principals(make_user: Callable[..., User], make_book: Callable[..., Book]) -> dict[str, Any]:
    """Customer A (who has an order), an anonymous client, customer B, and a token that is garbage."""
    a, b = make_user(username="alice-a"), make_user(username="bob-b")
    book = make_book()
    order_place(user=a, lines=[LineRequest(book_id=book.pk, quantity=1)])
    garbage = APIClient()
    garbage.credentials(HTTP_AUTHORIZATION="Token not-a-token-anyone-was-given")
    return {"A": client_for(a), "anonymous": APIClient(), "B": client_for(b), "garbage": garbage, "user_a": a}


@pytest.mark.parametrize(
    ("pattern", "paths"),
    [(ORDERS, [ORDERS]), (ME, [ME]), ("/api/", [ORDERS, ME, BOOKS])],
    ids=["stale-on-orders", "stale-on-me", "stale-on-api-prefix"],
)
def test_a_stale_copy_is_never_a_private_response(
    db: None, principals: dict[str, Any], pattern: str, paths: list[str]
) -> None:
    policy = stale_breaker(pattern)
    who = ["A", "anonymous", "B", "garbage"]
    closed = {(name, path): principals[name].get(path, **JSON) for name in who for path in paths}
    assert closed[("A", paths[0])].status_code == 200  # A's private page was served, and could be kept
    a_private = [closed[("A", p)].content for p in paths if p != BOOKS]
    user_a: User = principals["user_a"]

    force_open(policy)
    opened = {(name, path): principals[name].get(path, **JSON) for name in who for path in paths}

    for (name, path), response in opened.items():
        assert response.content not in a_private, (name, path)
        assert user_a.email.encode() not in response.content, (name, path)
        if is_stale(response):
            # Only the copy an anonymous client was served, and only to an anonymous client.
            assert (name, path) == ("anonymous", BOOKS)
            assert response.status_code == 200
            assert response.content == closed[("anonymous", BOOKS)].content
        else:
            assert_breaker_503(response)
    if BOOKS in paths:
        assert is_stale(opened[("anonymous", BOOKS)]), "the public catalogue keeps its stale copy"


def test_the_catalogue_keeps_a_copy_per_negotiated_content_type_for_anonymous_readers(
    db: None, make_book: Callable[..., Book], make_user: Callable[..., User]
) -> None:
    make_book()
    customer = make_user()
    policy = stale_breaker(BOOKS)
    good = APIClient().get(BOOKS, **JSON)
    html = APIClient().get(BOOKS, HTTP_ACCEPT="text/html")
    assert (good.status_code, html.status_code) == (200, 200)
    assert not html.cookies  # an anonymous API reader is handed no cookie (bookstore/lean.py)

    force_open(policy)
    stale = APIClient().get(BOOKS, **JSON)
    html_reader = APIClient().get(BOOKS, HTTP_ACCEPT="text/html")
    other_query = APIClient().get(BOOKS + "?page_size=5", **JSON)
    with_token = client_for(customer).get(BOOKS, **JSON)
    garbage = APIClient().get(BOOKS, HTTP_AUTHORIZATION="Token garbage", **JSON)
    session = Client()
    session.force_login(customer)
    with_session = session.get(BOOKS, **JSON)

    assert is_stale(stale)
    assert stale.status_code == 200
    assert stale.content == good.content
    assert stale["Content-Type"] == good["Content-Type"] == "application/json"
    assert "Accept" in stale["Vary"]
    assert is_stale(html_reader)  # its own copy, not the JSON one under an HTML Accept
    assert html_reader["Content-Type"].startswith("text/html")
    assert html_reader.content == html.content
    assert_breaker_503(other_query)  # the query string is part of the key
    for response in (with_token, garbage, with_session):  # credentials: never a copy made for others
        assert_breaker_503(response)


@pytest.mark.urls("tests.resilience.stale_urls")
@pytest.mark.parametrize(
    ("path", "saving_headers", "kept"),
    [
        ("/t/public", {}, True),
        ("/t/sets-cookie", {}, False),
        ("/t/private", {}, False),
        ("/t/no-store", {}, False),
        ("/t/vary-star", {}, False),
        ("/t/vary-cookie", {}, True),  # the variant of a request without cookies: everyone's
        ("/t/vary-cookie", {"HTTP_COOKIE": "cart=c-1234"}, False),
        ("/t/vary-authorization", {}, True),
        ("/t/public", {"HTTP_AUTHORIZATION": "Basic YTpi"}, False),
        ("/t/public", {"HTTP_COOKIE": "sessionid=abc123"}, False),
    ],
)
def test_only_a_public_response_is_kept(db: None, path: str, saving_headers: dict[str, str], kept: bool) -> None:
    policy = stale_breaker("/t/")
    good = Client().get(path, **saving_headers)
    assert good.status_code == 200

    force_open(policy)
    anonymous = Client().get(path)
    same_again = Client().get(path, **saving_headers)

    if kept:
        assert is_stale(anonymous)
        assert anonymous.content == good.content
    else:
        assert_breaker_503(anonymous)
        assert_breaker_503(same_again)
