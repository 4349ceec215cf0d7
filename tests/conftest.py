"""Shared fixtures: users of every kind, books, API clients."""

from __future__ import annotations

import importlib
import itertools
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.http import HttpResponse
from rest_framework.test import APIClient

from accounts.models import User
from accounts.services import token_create, user_create
from catalog.models import Book
from catalog.services import book_create
from resilience.models import CircuitBreakerPolicy, ConcurrencyPolicy, RateLimitOverride, RateLimitPolicy
from tests.live import LiveServer, stop_all

_counter = itertools.count(1)


def _isbn13(n: int) -> str:
    body = f"979{n:09d}"
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    def make(role: str = User.Role.CUSTOMER, status: str = User.Status.ACTIVE, **kwargs: Any) -> User:
        n = next(_counter)
        user = user_create(
            username=kwargs.pop("username", f"user{n}"),
            email=kwargs.pop("email", f"user{n}@example.com"),
            password=kwargs.pop("password", "correct-horse-battery"),
            role=role,
        )
        if status != User.Status.ACTIVE:
            User.objects.filter(pk=user.pk).update(status=status)
            user.refresh_from_db()
        return user

    return make


@pytest.fixture
def customer(make_user: Callable[..., User]) -> User:
    return make_user()


@pytest.fixture
def suspended(make_user: Callable[..., User]) -> User:
    return make_user(status=User.Status.SUSPENDED)


@pytest.fixture
def staff(make_user: Callable[..., User]) -> User:
    return make_user(role=User.Role.STAFF)


@pytest.fixture
def make_book(db: None) -> Callable[..., Book]:
    def make(stock: int = 10, price: str = "12.50", **kwargs: Any) -> Book:
        n = next(_counter)
        return book_create(
            isbn=kwargs.pop("isbn", _isbn13(n)),
            title=kwargs.pop("title", f"Book {n}"),
            price=Decimal(price),
            stock=stock,
            authors=kwargs.pop("authors", [f"Author {n}"]),
            **kwargs,
        )

    return make


def _saved(policy: Any) -> Any:
    """Validate and save a policy as the admin would; make this process load it at once.

    Inside a test transaction nothing commits, so the reload a save triggers after commit must be asked
    for here; running workers (live tests) hear of the save themselves.
    """
    from resilience.runtime import get_runtime

    policy.full_clean()
    policy.save()
    get_runtime().invalidate()
    return policy


def make_policy(*, overrides: dict[str, int] | None = None, **fields: Any) -> RateLimitPolicy:
    """Create a validated rate-limit policy (and per-key overrides); by default on /api/books, per hour.

    An hour-long period means no window rolls over while a test runs.
    """
    fields.setdefault("name", f"rl-{next(_counter)}")
    fields.setdefault("pattern", "/api/books")
    fields.setdefault("period", 3600)
    policy: RateLimitPolicy = _saved(RateLimitPolicy(**fields))
    for key_value, limit in (overrides or {}).items():
        RateLimitOverride.objects.create(policy=policy, key_value=key_value, limit=limit)
    return policy


def make_breaker(**fields: Any) -> CircuitBreakerPolicy:
    """Create a validated circuit-breaker policy (model defaults for what is not given)."""
    fields.setdefault("name", f"cb-{next(_counter)}")
    breaker: CircuitBreakerPolicy = _saved(CircuitBreakerPolicy(**fields))
    return breaker


def make_concurrency(**fields: Any) -> ConcurrencyPolicy:
    """Create a validated concurrency policy (model defaults for what is not given)."""
    fields.setdefault("name", f"slots-{next(_counter)}")
    policy: ConcurrencyPolicy = _saved(ConcurrencyPolicy(**fields))
    return policy


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


def client_for(user: User) -> APIClient:
    """Return an API client authenticated with the user's token, as a real client would be."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_create(user=user).token}")
    return client


PROBLEM = "application/problem+json"


def assert_problem(response: HttpResponse, status: int) -> dict[str, Any]:
    """Assert ``response`` is a problem+json answer with ``status``, a type and a title; return its body."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM
    body: dict[str, Any] = response.json()  # type: ignore[attr-defined]
    assert body["status"] == status
    assert body["type"]
    assert body["title"]
    return body


@pytest.fixture
def customer_client(customer: User) -> APIClient:
    return client_for(customer)


@pytest.fixture
def staff_client(staff: User) -> APIClient:
    return client_for(staff)


@pytest.fixture
def suspended_client(suspended: User) -> APIClient:
    return client_for(suspended)


@pytest.fixture
def token_cache_live() -> None:
    """Wait until this process's subscription to token revocations is up: only then are tokens remembered."""
    from accounts import token_cache

    cache = token_cache.get_cache()
    cache.asked()  # starts the listener
    deadline = time.monotonic() + 10
    while not cache.live():
        assert time.monotonic() < deadline, "no subscription to token revocations"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _resilience_isolation(request: pytest.FixtureRequest) -> None:
    """Start every database test without resilience policies, unless it asks for the defaults.

    The default policies (per-IP limits) would otherwise throttle tests that send many requests
    from one address; tests of the policies themselves create what they need.
    """
    from accounts import token_cache
    from catalog.http import pages
    from resilience.http import principal
    from resilience.http.middleware import route_info
    from resilience.runtime import get_runtime

    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or (
        marker is not None and marker.kwargs.get("transaction", False)
    )
    uses_db = transactional or marker is not None or "db" in request.fixturenames
    if uses_db and request.node.get_closest_marker("default_policies") is None:
        request.getfixturevalue("transactional_db" if transactional else "db")
        RateLimitPolicy.objects.all().delete()
        CircuitBreakerPolicy.objects.all().delete()
        ConcurrencyPolicy.objects.all().delete()
    elif uses_db:
        # A transactional test before this one flushed the rows the data migrations made.
        request.getfixturevalue("transactional_db" if transactional else "db")
        from django.apps import apps as django_apps

        for name in (
            "0002_default_policies",
            "0004_default_breakers",
            "0008_database_breaker",
            "0009_login_limits",
            "0011_default_concurrency",
        ):
            importlib.import_module(f"resilience.migrations.{name}").create(django_apps, None)
    principal.clear()
    token_cache.clear()
    # A rolled-back test leaves the catalogue version as it found it, so the next test's pages would
    # match the copies this one kept (a restored database is the same case; its version time tells it apart).
    pages.clear()
    route_info.cache_clear()
    runtime = get_runtime()
    runtime.invalidate()
    if uses_db:
        # Reports of workers an earlier test started would otherwise divide this test's fallback limits.
        from django.conf import settings

        from resilience.runtime import workers_key

        runtime.fleet_workers = settings.RESILIENCE_FALLBACK_WORKERS
        if runtime.uses_redis:
            runtime.shared.client.delete(workers_key())


@pytest.fixture
def live_servers(transactional_db: None) -> Iterator[Callable[..., LiveServer]]:
    """Return a factory that starts gunicorn (LiveServer arguments; probe=True boots on /health/live).

    Every server stops at teardown. It needs transactional_db: the workers are other processes, so
    they see only committed data.
    """
    servers: list[LiveServer] = []

    def start(*, probe: bool = False, **kwargs: Any) -> LiveServer:
        if probe:
            kwargs.setdefault("ready_path", "/health/live")
        server = LiveServer(**kwargs)
        servers.append(server)
        return server.start()

    yield start
    stop_all(reversed(servers))
