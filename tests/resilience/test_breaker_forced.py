"""A breaker an operator forced open says so wherever it answers: held until released, no Retry-After.

Its open period is no time to retry after: the breaker never turns half-open by itself. Every
place a forced-open breaker refuses is checked, by a refusal the shared store decided and by one
this process made from memory (resilience/runtime/refusals.py): the middleware's route breakers, the
``with breaker()`` code guard (behind book search) and the database breaker, on DRF's path and on
Django's own (handler500).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.db import connections
from django.http import HttpResponse
from django.test import Client
from rest_framework.test import APIClient

from bookstore.problems import problem_type
from catalog.models import Book
from resilience import services
from resilience.db import guard as database
from resilience.engine.breaker import State
from resilience.http.guards import BreakerOpen, breaker
from resilience.runtime import get_runtime
from tests.resilience.test_breaker_known_open import known, within
from tests.resilience.test_breaker_middleware import REDUCED_CAPACITY, SEARCH, make_breaker

pytestmark = pytest.mark.usefixtures("fresh_runtime")

HELD = "held until an operator releases it"


def assert_held_open(response: HttpResponse, problem_type: str = REDUCED_CAPACITY) -> None:
    """Check a forced-open refusal: a 503 problem that says it is held, and gives no time to retry."""
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert "Retry-After" not in response, response["Retry-After"]
    body = response.json()
    assert body["type"] == problem_type
    assert body["forced"] is True
    assert HELD in body["detail"]


def remembered(name: str) -> bool:
    """Return whether this process refuses calls to breaker ``name`` from memory, without asking Redis."""
    return known().seconds_left(name) is not None


@pytest.fixture
def forced_open() -> Iterator[Callable[[str], None]]:
    """Return a function that forces a breaker open; every breaker it forced is reset at teardown.

    Breaker state lives in Redis, past the test: a breaker left forced open would refuse later tests.
    """
    forced: list[str] = []

    def force(name: str) -> None:
        forced.append(name)
        services.breaker_force(names=[name], state=State.FORCED_OPEN)

    yield force
    services.breaker_reset(names=forced)


def test_a_route_breaker_forced_open_sends_no_retry_after(
    make_book: Callable[..., Book], forced_open: Callable[[str], None]
) -> None:
    policy = make_breaker(open_seconds=15)
    page = f"/api/books/{make_book().pk}"
    client = APIClient()
    forced_open(policy.name)

    asked = client.get(page)  # decided by the shared store
    assert_held_open(asked)
    within(10, known().live)
    client.get(page)  # remembered from here on
    assert remembered(policy.name)
    from_memory = client.get(page)

    assert_held_open(from_memory)
    for response in (asked, from_memory):
        assert response["X-Circuit-Breaker-State"] == "open"
        assert response.json()["breaker"] == policy.name


def test_the_code_guard_forced_open_sends_no_retry_after(forced_open: Callable[[str], None]) -> None:
    make_breaker(name="search", match_type="tag", pattern="search", failure_statuses="500-599", open_seconds=15)
    make_breaker(name="guarded", match_type="code", failure_statuses="500-599", open_seconds=15)
    forced_open("search")
    forced_open("guarded")

    def call() -> None:
        with breaker("guarded"):
            pytest.fail("a forced-open breaker ran the call")

    with pytest.raises(BreakerOpen) as asked:
        call()
    assert asked.value.retry_after is None
    within(10, known().live)
    with pytest.raises(BreakerOpen):
        call()
    assert remembered("guarded")
    with pytest.raises(BreakerOpen) as from_memory:
        call()

    for refused in (asked.value, from_memory.value):
        assert refused.retry_after is None
        assert "Retry-After" not in refused.headers
        assert refused.extra["forced"] is True
        assert HELD in refused.detail
    # Book search runs under its own guard and route breaker: its 503 says the same.
    assert_held_open(APIClient().get(SEARCH))


@pytest.fixture
def database_held_open(transactional_db: None) -> Iterator[None]:
    """Force the database breaker open (and release it after), with no connection open."""
    services.breaker_force(names=[database.NAME], state=State.FORCED_OPEN)
    connections["default"].close()  # the next query must take a connection, as a request does
    try:
        yield
    finally:
        services.breaker_reset(names=[database.NAME])


@pytest.mark.parametrize("path", ["/api/books", "/admin/"])
def test_the_database_breaker_forced_open_sends_no_retry_after(database_held_open: None, path: str) -> None:
    # /admin/ with a session cookie reads the session table outside DRF: Django's handler500 answers.
    client = Client(raise_request_exception=False, HTTP_COOKIE="sessionid=" + "s" * 32)

    asked = client.get(path)
    assert_held_open(asked, problem_type("database-unavailable"))
    within(10, known().live)
    client.get(path)
    assert remembered(database.NAME)
    from_memory = client.get(path)

    assert_held_open(from_memory, problem_type("database-unavailable"))
    for response in (asked, from_memory):
        assert response.json()["breaker"] == database.NAME


def test_an_ordinary_open_database_breaker_still_says_when_to_retry(transactional_db: None) -> None:
    store, _ = get_runtime().breaker_store()
    # Tripped as refused connections trip it, for 30 s (the period is fixed when it trips), so
    # that it is still open when the request comes, however loaded the machine.
    config = database.database_config()._replace(open_seconds=30)
    store.reset(database.NAME)
    for _ in range(config.failure_threshold):
        permit, _ = store.allow(config)
        store.record(config, permit.generation, False)
    database.guard.forget()  # this process trusted "closed" for a moment: ask the store
    connections["default"].close()
    try:
        response = Client().get("/api/books")
    finally:
        services.breaker_reset(names=[database.NAME])

    assert response.status_code == 503
    assert 28 <= int(response["Retry-After"]) <= 30  # its time to half-open: the fleet tries again then
    assert "forced" not in response.json()
