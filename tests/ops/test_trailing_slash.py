"""Every API route answers with and without a trailing slash: directly, or by one 308 that keeps the method."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
import requests
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.test import APIClient

from accounts.models import User
from resilience.models import RateLimitPolicy
from resilience.runtime import get_runtime
from tests.live import LiveServer

# A value for each path converter the API uses, so that every route can be requested.
_CONVERTERS = {"int": "1", "slug": "search", "str": "x"}
_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


def _routes(patterns: list, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        else:
            yield route, pattern


def api_operations() -> list[tuple[str, str]]:
    """Return (method, concrete path) for every method of every API route that ends without a slash."""
    found = []
    for route, pattern in _routes(get_resolver().url_patterns):
        if not route.startswith("api/") or route.endswith("/"):
            continue  # /api/schema/, /api/docs/, /api/redoc/ end with one themselves
        if route.startswith(("api/docs/", "api/redoc/")):
            continue  # the docs pages' own assets, not API operations
        path = "/" + _PARAMETER.sub(lambda m: _CONVERTERS[m["converter"] or "str"], route)
        view = getattr(pattern.callback, "view_class", None)
        assert view is not None, f"{route} is not a class-based API view"
        methods = [m.upper() for m in view.http_method_names if m not in {"options", "head"} and hasattr(view, m)]
        found += [(method, path) for method in methods]
    assert {("GET", "/api/books"), ("PATCH", "/api/books/1")} <= set(found), "the route walk lost routes"
    return found


OPERATIONS = api_operations()


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_a_trailing_slash_is_a_308_to_the_route_without_it(db: None, method: str, path: str) -> None:
    response = Client().generic(method, path + "/?page=2&q=%C3%A9t%C3%A9")

    assert response.status_code == 308, (method, path, response.status_code)
    assert response["Location"] == path + "?page=2&q=%C3%A9t%C3%A9"
    # The slashless form is the route itself: the redirect leads to the same view.
    assert resolve(path).func == resolve(response["Location"].split("?")[0]).func


def test_a_redirected_post_keeps_its_method_and_body(db: None) -> None:
    body = {"username": "slashed", "email": "slashed@example.com", "password": "correct-horse-battery"}

    response = APIClient().post("/api/accounts/register/", body, format="json", follow=True)

    assert response.redirect_chain == [("/api/accounts/register", 308)]
    assert response.status_code == 202, response.content
    assert User.objects.filter(username="slashed").exists()


def test_the_redirect_costs_no_quota(db: None) -> None:
    RateLimitPolicy.objects.create(name="books-once", match_type="prefix", pattern="/api/books", key="ip", limit=1)
    get_runtime().invalidate()
    client = Client()

    redirect = client.get("/api/books/")
    counted = client.get("/api/books")

    assert redirect.status_code == 308
    assert "RateLimit" not in redirect
    assert counted.status_code == 200
    assert client.get("/api/books").status_code == 429


def test_only_a_slash_away_from_a_route_is_redirected(db: None) -> None:
    client = Client()

    assert client.get("/api/books/1/")["Location"] == "/api/books/1"
    for path in ["/api/nothing-here/", "/api/books/1/extra/", "//evil.example/", "/api/books//"]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert "Location" not in response
    # Routes that end with a slash themselves are served as they are.
    assert client.get("/api/schema/").status_code == 200


@pytest.mark.live
def test_a_real_client_follows_the_308_with_its_post_body(
    live_servers: Callable[..., LiveServer],
) -> None:
    server = live_servers(workers=1)
    body = {"username": "over-http", "email": "over-http@example.com", "password": "correct-horse-battery"}

    response = requests.post(f"{server.url}/api/accounts/register/", json=body, timeout=10)

    assert [r.status_code for r in response.history] == [308]
    assert response.status_code == 202, response.text
    assert response.json()["username"] == "over-http"
