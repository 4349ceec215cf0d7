"""The database breaker at the connection boundary: what counts, what trips it, how it comes back.

Connections go to the test database through a TcpProxy that a test can make refuse or drop
connections, on a database alias of their own ("outage"), outside pytest-django's test
transaction, so the suite's own connection is never cut. They share this process's database
breaker, which is reset before and after each test.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, OperationalError, ProgrammingError, connections
from django.test import Client

from resilience import services
from resilience.db import guard as database
from resilience.db.guard import NAME, DatabaseUnavailable
from resilience.db.postgresql.base import DatabaseWrapper
from resilience.engine.breaker import Snapshot, State
from resilience.runtime import get_runtime, reset_runtime
from tests.live import HOST, TcpProxy

ALIAS = "outage"


def breaker() -> Snapshot:
    """Return the database breaker's state as every worker sees it."""
    store, _ = get_runtime().breaker_store()
    return store.snapshot(database.database_config())


@pytest.fixture
def database_breaker() -> Iterator[None]:
    """Start and end with the database breaker closed, and a runtime that loaded no policy (built-in config)."""

    def reset() -> None:
        reset_runtime()
        get_runtime().breaker_store()[0].reset(NAME)
        database.guard.forget()

    reset()
    yield
    reset()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    port = int(connections["default"].settings_dict["PORT"] or 5432)
    with TcpProxy(port) as proxy:
        yield proxy


@pytest.fixture
def through(proxy: TcpProxy, database_breaker: None, django_db_blocker: Any) -> Iterator[Callable[[], DatabaseWrapper]]:
    """Return the getter of this thread's connection to the test database through the proxy."""
    params = copy.deepcopy(connections["default"].settings_dict)
    params.update(HOST=HOST, PORT=str(proxy.port))
    # Waits of a fraction of a second: the test should not sit through DB_POOL_TIMEOUT each time.
    params["OPTIONS"]["pool"] = {**params["OPTIONS"]["pool"], "min_size": 0, "timeout": 0.3}
    connections.settings[ALIAS] = params
    try:
        with django_db_blocker.unblock():
            yield lambda: connections[ALIAS]
            with contextlib.suppress(DatabaseError):
                connections[ALIAS].close()
    finally:
        pool = DatabaseWrapper._connection_pools.pop(ALIAS, None)
        if pool is not None:
            pool.close()
        del connections[ALIAS]
        del connections.settings[ALIAS]
        DatabaseWrapper._drained.discard(ALIAS)
        DatabaseWrapper._generations.pop(ALIAS, None)


def fail_to_connect(through: Callable[[], DatabaseWrapper], times: int) -> None:
    for _ in range(times):
        with pytest.raises(OperationalError) as failed:
            through().ensure_connection()
        assert not isinstance(failed.value, DatabaseUnavailable), "the breaker refused before it should"


def test_refused_connections_trip_it_and_then_no_connection_is_tried(
    through: Callable[[], DatabaseWrapper], proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An open period this test cannot outlast, so the breaker is still open when it looks.
    monkeypatch.setattr(database, "DEFAULT_CONFIG", database.DEFAULT_CONFIG._replace(open_seconds=60.0))
    proxy.refuse()

    fail_to_connect(through, 3)

    assert breaker().state is State.OPEN
    proxy.hang()  # from now on a connection attempt would be accepted, and counted
    began = time.perf_counter()
    with pytest.raises(DatabaseUnavailable) as refused:
        through().ensure_connection()
    assert time.perf_counter() - began < 0.05, "no pool wait, no connection attempt"
    assert proxy.accepted == 0
    assert 55 <= refused.value.retry_after <= 60


def test_errors_on_a_live_connection_do_not_count(through: Callable[[], DatabaseWrapper]) -> None:
    wrapper = through()
    with wrapper.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE once (id int PRIMARY KEY)")
        cursor.execute("INSERT INTO once VALUES (1)")
        with pytest.raises(IntegrityError):
            cursor.execute("INSERT INTO once VALUES (1)")
        cursor.execute("SET statement_timeout = 10")
        with pytest.raises(OperationalError):  # QueryCanceled: the server answered, and is up
            cursor.execute("SELECT pg_sleep(1)")
        with pytest.raises(ProgrammingError):
            cursor.execute("SELEC 1")

    snapshot = breaker()
    assert (snapshot.state, snapshot.consecutive_failures) == (State.CLOSED, 0)


def test_a_connection_lost_in_a_transaction_counts_once(
    through: Callable[[], DatabaseWrapper], proxy: TcpProxy
) -> None:
    wrapper = through()
    wrapper.set_autocommit(False)
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")

    proxy.refuse()  # the server goes away under the open transaction
    with pytest.raises(OperationalError), wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")
    with contextlib.suppress(DatabaseError):
        wrapper.rollback()
    wrapper.close()

    snapshot = breaker()
    assert (snapshot.state, snapshot.consecutive_failures) == (State.CLOSED, 1)


def test_the_half_open_trial_connects_on_its_own_and_closes_the_breaker(
    through: Callable[[], DatabaseWrapper], proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "DEFAULT_CONFIG", database.DEFAULT_CONFIG._replace(open_seconds=0.2))
    proxy.refuse()
    fail_to_connect(through, 3)
    proxy.restore()
    deadline = time.monotonic() + 5
    while breaker().state is not State.HALF_OPEN:
        assert time.monotonic() < deadline, "the open period should have ended"

    wrapper = through()
    wrapper.ensure_connection()

    assert getattr(wrapper.connection, "_pool", None) is None, "the trial's connection is its own, not the pool's"
    assert breaker().state is State.CLOSED
    own = wrapper.connection
    wrapper.close()
    assert own.closed, "handed back means closed: it never belonged to the pool"


def test_an_open_breaker_is_a_503_problem(transactional_db: None) -> None:
    services.breaker_force(names=[NAME], state=State.FORCED_OPEN)
    try:
        connections["default"].close()  # the next query must take a connection, as a request does

        response = Client().get("/api/books")

        assert response.status_code == 503
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["type"].endswith("/database-unavailable")
        assert response.json()["breaker"] == NAME
        # Forced open: held until released, so no Retry-After (tests/resilience/test_breaker_forced.py).
        assert "Retry-After" not in response
    finally:
        services.breaker_reset(names=[NAME])


def test_breaker_health_and_metrics_read_no_table(db: None, django_assert_num_queries: Callable) -> None:
    client = Client()
    client.get("/health/breakers")  # the first request of the process loads the policies

    with django_assert_num_queries(0):
        health = client.get("/health/breakers")
        metrics = client.get("/metrics")

    assert health.status_code == 200
    assert NAME in {row["name"] for row in health.json()["breakers"]}
    assert metrics.status_code == 200
    assert f'bookstore_breaker_state{{breaker="{NAME}",state="closed"}} 1.0' in metrics.content.decode()


@pytest.mark.default_policies
def test_its_policy_row_tunes_it_and_a_missing_row_leaves_the_default(db: None) -> None:
    from resilience.models import CircuitBreakerPolicy
    from resilience.runtime import get_runtime

    row = CircuitBreakerPolicy.objects.get(name=NAME)
    assert (row.match_type, row.failure_threshold, row.open_seconds, row.half_open_max_calls) == ("code", 3, 1, 1)
    CircuitBreakerPolicy.objects.filter(pk=row.pk).update(failure_threshold=7, open_seconds=4)
    get_runtime().invalidate()
    get_runtime().snapshot()
    assert database.database_config()[1:] == database.DEFAULT_CONFIG._replace(failure_threshold=7, open_seconds=4.0)[1:]

    row.delete()
    get_runtime().invalidate()
    get_runtime().snapshot()
    assert database.database_config() == database.DEFAULT_CONFIG


@pytest.mark.default_policies
def test_the_admin_shows_the_database_breaker_and_keeps_its_row(admin_client: Client) -> None:
    from resilience.models import CircuitBreakerPolicy

    row = CircuitBreakerPolicy.objects.get(name=NAME)
    url = "/admin/resilience/circuitbreakerpolicy/"

    listing = admin_client.get(url).content.decode()
    change = admin_client.get(f"{url}{row.pk}/change/").content.decode()
    delete = admin_client.post(f"{url}{row.pk}/delete/", {"post": "yes"})

    assert "every PostgreSQL connection (built in)" in listing
    assert 'name="failure_threshold"' in change, "its numbers are staff's to tune"
    assert 'name="name"' not in change, "what it guards is not"
    assert 'name="match_type"' not in change
    assert delete.status_code == 403
    assert CircuitBreakerPolicy.objects.filter(name=NAME).exists()
