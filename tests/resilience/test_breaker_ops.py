"""Operators and staff run the breakers: the command, the health and metrics endpoints, the admin."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.management import CommandError, call_command
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Book
from resilience.engine.breaker import State
from resilience.models import CircuitBreakerPolicy
from resilience.runtime import get_runtime
from resilience.runtime.policies import breaker_config
from tests.conftest import make_breaker as shared_make_breaker

CHANGELIST = "/admin/resilience/circuitbreakerpolicy/"
ADD = CHANGELIST + "add/"

_names = itertools.count(1)


def make_breaker(book: Book | None = None, **fields: Any) -> CircuitBreakerPolicy:
    """Create a breaker on a missing book of its own (404s fail), and on `book`; make this process see it."""
    n = next(_names)
    missing = 990_000 + n
    fields.setdefault("name", f"ops-{n}")
    fields.setdefault("match_type", "regex")
    fields.setdefault("pattern", rf"^/api/books/({missing}|{book.pk if book else missing})$")
    fields.setdefault("failure_statuses", "404")
    fields.setdefault("failure_threshold", 2)
    policy = shared_make_breaker(**fields)
    policy.missing_path = f"/api/books/{missing}"  # type: ignore[attr-defined]  # set by the fixture
    return policy


def trip(policy: CircuitBreakerPolicy) -> None:
    client = APIClient()
    for _ in range(policy.failure_threshold):
        assert client.get(policy.missing_path).status_code == 404  # type: ignore[attr-defined]  # set by the fixture
    assert state(policy) is State.OPEN


def state(policy: CircuitBreakerPolicy) -> State:
    return get_runtime().breaker_shared.snapshot(breaker_config(policy)).state


def breakers(*args: str) -> str:
    """Run `manage.py breakers ARGS` and return what it printed."""
    out = StringIO()
    call_command("breakers", *args, stdout=out)
    return out.getvalue()


def status_rows(*args: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(breakers("status", *args, "--json"))}


def gauges(text: str) -> dict[str, dict[str, float]]:
    """Return bookstore_breaker_state as {breaker: {state: value}} from a Prometheus exposition."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "bookstore_breaker_state":
            for sample in family.samples:
                found.setdefault(sample.labels["breaker"], {})[sample.labels["state"]] = sample.value
    return found


def assert_one_state(values: dict[str, float], expected: str) -> None:
    assert set(values) == {"closed", "open", "half-open", "forced-open", "forced-closed"}
    assert [s for s, v in values.items() if v == 1.0] == [expected]
    assert sum(values.values()) == 1.0


# --- the command ---------------------------------------------------------------------------------------


def test_status_json_lists_every_breaker_with_its_state(db: None) -> None:
    closed, tripped = make_breaker(), make_breaker()
    trip(tripped)

    rows = status_rows()

    assert rows[closed.name]["state"] == "closed"
    assert rows[tripped.name]["state"] == "open"
    assert rows[tripped.name]["detail_state"] == "open"
    assert 29 <= rows[tripped.name]["seconds_to_half_open"] <= 30
    assert rows[tripped.name]["store"] == "shared"
    assert list(status_rows(closed.name)) == [closed.name]
    # Options may come first, as operators type them.
    assert [row["name"] for row in json.loads(breakers("status", "--json", closed.name))] == [closed.name]


def test_status_text_shows_time_to_half_open(db: None) -> None:
    policy = make_breaker()
    trip(policy)

    line = next(line for line in breakers("status").splitlines() if line.startswith(policy.name))

    assert "open" in line
    assert re.search(r"half-open in (29|30) s", line)


def test_status_says_a_forced_breaker_is_held_not_when_it_turns_half_open(db: None) -> None:
    opened, closed = make_breaker(open_seconds=15), make_breaker(open_seconds=15)
    breakers("open", opened.name)
    breakers("close", closed.name)

    lines = {line.split()[0]: line for line in breakers("status").splitlines()[:-1]}
    rows = status_rows()

    assert "forced open: held until an operator releases it" in lines[opened.name]
    assert "forced closed: held until an operator releases it" in lines[closed.name]
    assert "half-open" not in lines[opened.name] + lines[closed.name]
    # No time to half-open: the open period (15 s) would say it ends by itself.
    assert rows[opened.name]["seconds_to_half_open"] is None
    assert rows[opened.name]["summary"] == "forced open: held until an operator releases it"
    assert rows[opened.name]["detail_state"] == "forced-open"


def test_reset_closes_a_tripped_breaker(db: None, make_book: Callable[..., Book]) -> None:
    book = make_book()
    policy = make_breaker(book)
    trip(policy)
    assert APIClient().get(f"/api/books/{book.pk}").status_code == 503

    breakers("reset", policy.name)

    response = APIClient().get(f"/api/books/{book.pk}")
    assert response.status_code == 200
    assert response["X-Circuit-Breaker-State"] == "closed"
    assert status_rows()[policy.name]["consecutive_failures"] == 0


def test_reset_all_closes_every_breaker(db: None) -> None:
    policies = [make_breaker(), make_breaker()]
    for policy in policies:
        trip(policy)

    breakers("reset", "--all")

    assert [state(p) for p in policies] == [State.CLOSED, State.CLOSED]


def test_open_holds_after_the_open_period(db: None, make_book: Callable[..., Book]) -> None:
    book = make_book()
    policy = make_breaker(book, open_seconds=1)

    breakers("open", policy.name)
    first = APIClient().get(f"/api/books/{book.pk}")
    time.sleep(1.1)  # one open period: a tripped breaker would now admit a trial
    later = APIClient().get(f"/api/books/{book.pk}")

    for response in (first, later):
        assert response.status_code == 503
        assert response["X-Circuit-Breaker-State"] == "open"
        # Held until released: no time to retry can be given, so none is (not the 1 s open period).
        assert "Retry-After" not in response
        assert response.json()["forced"] is True
        assert "held until an operator releases it" in response.json()["detail"]
    assert state(policy) is State.FORCED_OPEN
    assert status_rows()[policy.name]["forced"] is True


def test_close_holds_through_failures(db: None) -> None:
    policy = make_breaker(failure_threshold=2)

    breakers("close", policy.name)
    responses = [APIClient().get(policy.missing_path) for _ in range(5)]  # type: ignore[attr-defined]  # set by the fixture

    assert [r.status_code for r in responses] == [404] * 5
    assert {r["X-Circuit-Breaker-State"] for r in responses} == {"closed"}
    assert state(policy) is State.FORCED_CLOSED


def test_release_ends_a_forced_state(db: None, make_book: Callable[..., Book]) -> None:
    book = make_book()
    policy = make_breaker(book)
    breakers("open", policy.name)

    breakers("release", policy.name)

    assert state(policy) is State.CLOSED
    assert APIClient().get(f"/api/books/{book.pk}").status_code == 200
    # A released breaker trips normally again.
    trip(policy)


@pytest.mark.parametrize("action", ["status", "reset", "open", "close", "release"])
def test_unknown_breaker_is_an_error(db: None, action: str) -> None:
    if action == "status":
        assert status_rows("no-such-breaker") == {}
        return
    with pytest.raises(CommandError, match="no-such-breaker"):
        breakers(action, "no-such-breaker")


@pytest.mark.parametrize("action", ["reset", "open", "close", "release"])
def test_action_needs_a_name(db: None, action: str) -> None:
    with pytest.raises(CommandError):
        breakers(action)


# --- health and metrics ----------------------------------------------------------------------------


def test_health_lists_every_enabled_breaker(db: None) -> None:
    closed, tripped = make_breaker(), make_breaker()
    disabled = make_breaker(enabled=False)
    trip(tripped)

    response = APIClient().get("/health/breakers")

    assert response.status_code == 200
    rows = {row["name"]: row for row in response.json()["breakers"]}
    # The database breaker is built in: listed even without its policy row.
    assert set(rows) == {closed.name, tripped.name, "database"}
    assert disabled.name not in rows
    assert rows[closed.name]["state"] == "closed"
    assert rows[tripped.name]["state"] == "open"


def test_health_says_a_forced_open_breaker_is_held(db: None) -> None:
    forced = make_breaker(open_seconds=15)
    breakers("open", forced.name)

    rows = {row["name"]: row for row in APIClient().get("/health/breakers").json()["breakers"]}

    assert rows[forced.name]["state"] == "open"
    assert rows[forced.name]["forced"] is True
    assert rows[forced.name]["seconds_to_half_open"] is None
    assert rows[forced.name]["summary"] == "forced open: held until an operator releases it"


@pytest.mark.parametrize("path", ["/health/breaker_metrics", "/metrics"])
def test_metrics_expose_one_state_per_breaker(db: None, path: str) -> None:
    closed, tripped, forced = make_breaker(), make_breaker(), make_breaker()
    trip(tripped)
    breakers("open", forced.name)

    response = APIClient().get(path)

    assert response.status_code == 200
    found = gauges(response.content.decode())
    assert_one_state(found[closed.name], "closed")
    assert_one_state(found[tripped.name], "open")
    assert_one_state(found[forced.name], "forced-open")


def test_metrics_are_not_public(db: None) -> None:
    response = APIClient().get("/health/breaker_metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403


# --- admin --------------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(db: None) -> Client:
    superuser = User.objects.create_superuser(username="root", email="root@example.com", password="pw-x8-long")
    client = Client()
    client.force_login(superuser)
    return client


def action(admin_client: Client, name: str, *policies: CircuitBreakerPolicy) -> None:
    response = admin_client.post(
        CHANGELIST, {"action": name, "_selected_action": [str(p.pk) for p in policies], "index": "0"}
    )
    assert response.status_code == 302


def history(policy: CircuitBreakerPolicy) -> list[str]:
    return list(
        LogEntry.objects.filter(object_id=str(policy.pk), action_flag=CHANGE)
        .order_by("pk")
        .values_list("change_message", flat=True)
    )


def live_states(html: str) -> dict[str, str]:
    """Return the changelist's "state" column by policy name."""
    rows = re.findall(r'<a href="[^"]+/change/">([^<]+)</a>.*?class="field-live_state">([^<]*)</td>', html, re.S)
    return dict(rows)


def test_changelist_shows_live_state_and_time_to_half_open(admin_client: Client) -> None:
    closed, tripped, forced = make_breaker(), make_breaker(), make_breaker()
    trip(tripped)
    breakers("open", forced.name)

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    live = live_states(response.content.decode())
    assert live[closed.name] == "closed"
    assert live[forced.name] == "forced open: held until an operator releases it"
    seconds = re.fullmatch(r"open, half-open in (\d+) s", live[tripped.name])
    assert seconds is not None, live[tripped.name]
    assert 29 <= int(seconds[1]) <= 30


@pytest.mark.parametrize(
    ("name", "expected", "message"),
    [
        ("reset", State.CLOSED, "Breaker reset"),
        ("force_open", State.FORCED_OPEN, "Breaker forced open"),
        ("force_close", State.FORCED_CLOSED, "Breaker forced closed"),
    ],
)
def test_actions_change_state_and_are_logged(admin_client: Client, name: str, expected: State, message: str) -> None:
    policies = [make_breaker(), make_breaker()]
    for policy in policies:
        trip(policy)

    action(admin_client, name, *policies)

    assert [state(p) for p in policies] == [expected, expected]
    assert [history(p) for p in policies] == [[message], [message]]


def test_release_action_ends_a_forced_state_and_is_logged(admin_client: Client) -> None:
    policy = make_breaker()
    action(admin_client, "force_open", policy)

    action(admin_client, "release", policy)

    assert state(policy) is State.CLOSED
    assert history(policy) == ["Breaker forced open", "Breaker released"]
    assert admin_client.get(f"{CHANGELIST}{policy.pk}/history/").status_code == 200


def form_data(**fields: Any) -> dict[str, str]:
    data = {
        "name": "search-db",
        "enabled": "on",
        "methods": "",
        "match_type": "prefix",
        "pattern": "/api/books/search",
        "failure_statuses": "500-599",
        "slow_call_ms": "",
        "failure_threshold": "5",
        "failure_rate": "0",
        "window_kind": "count",
        "window_size": "20",
        "minimum_calls": "10",
        "open_seconds": "30",
        "half_open_max_calls": "1",
        "fallback": "error",
        "stale_max_age": "300",
    }
    data.update(fields)
    return data


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, "an invalid form is shown again, not a redirect or a 500"
    return dict(response.context["adminform"].form.errors)


def test_add_form_saves_a_valid_breaker(admin_client: Client) -> None:
    response = admin_client.post(ADD, form_data())

    assert response.status_code == 302
    policy = CircuitBreakerPolicy.objects.get(name="search-db")
    assert (policy.failure_threshold, policy.open_seconds) == (5, 30)


@pytest.mark.parametrize("statuses", ["abc", "600", "599-500", "5xx", "99"])
def test_add_form_reports_bad_failure_statuses(admin_client: Client, statuses: str) -> None:
    errors = form_errors(admin_client.post(ADD, form_data(failure_statuses=statuses)))

    assert "failure_statuses" in errors
    assert not CircuitBreakerPolicy.objects.exists()


def test_add_form_needs_a_threshold_or_a_rate(admin_client: Client) -> None:
    errors = form_errors(admin_client.post(ADD, form_data(failure_threshold="0", failure_rate="0")))

    assert "failure_threshold" in errors
    assert not CircuitBreakerPolicy.objects.exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"failure_rate": "101"},
        {"window_size": "0"},
        {"open_seconds": "0"},
        {"half_open_max_calls": "0"},
        {"failure_threshold": "-1"},
        {"window_kind": "time", "window_size": "7200"},
    ],
)
def test_add_form_reports_out_of_range_numbers(admin_client: Client, fields: dict[str, str]) -> None:
    errors = form_errors(admin_client.post(ADD, form_data(**fields)))

    assert errors
    assert not CircuitBreakerPolicy.objects.exists()
