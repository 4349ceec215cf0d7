"""JSON log lines: one object per line with time, level, logger, message, request id, extras, exception."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from rest_framework.response import Response

from accounts.models import User
from bookstore import exceptions
from bookstore import logging as logging_module
from bookstore.logging import JsonFormatter, RequestIdFilter, Sampled, logging_config
from bookstore.request_id import RequestIdMiddleware
from resilience.models import CircuitBreakerPolicy, RateLimitOverride, RateLimitPolicy
from tests.live import ROOT, LiveServer, database_url, request

log = logging.getLogger("tests.ops")


def record(msg: str = "hello %s", args: tuple[Any, ...] = ("world",), **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("tests.ops", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_line_has_the_fixed_fields_and_every_extra() -> None:
    line = json.loads(
        JsonFormatter().format(record(event="store_error", operation="admit", error=OSError("down"), n=Decimal("1.5")))
    )

    assert line["message"] == "hello world"
    assert (line["level"], line["logger"], line["request_id"]) == ("WARNING", "tests.ops", None)
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0
    assert line["event"] == "store_error"
    assert line["operation"] == "admit"
    assert line["error"] == "down"
    assert line["n"] == "1.5"
    assert "args" not in line
    assert "msg" not in line


def test_an_extra_cannot_replace_a_fixed_field() -> None:
    line = json.loads(JsonFormatter().format(record(level="spoofed", request_id="spoofed")))

    assert line["level"] == "WARNING"
    assert line["request_id"] is None


def test_an_exception_is_one_string_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info())

    text = JsonFormatter().format(rec)

    assert "\n" not in text, "one line per record"
    line = json.loads(text)
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: boom")


def test_lines_logged_during_a_request_carry_its_id(rf: RequestFactory, json_lines: Callable[[], list[dict]]) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        log.warning("inside", extra={"event": "probe", "book": 7})
        return HttpResponse()

    RequestIdMiddleware(view)(rf.get("/", HTTP_X_REQUEST_ID="req-42"))
    log.warning("after")

    inside, after = [line for line in json_lines() if line["logger"] == "tests.ops"]
    assert (inside["request_id"], inside["event"], inside["book"]) == ("req-42", "probe", 7)
    assert after["request_id"] is None


def test_django_request_lines_carry_the_request_id_and_the_path(db: None, json_lines: Callable[[], list[dict]]) -> None:
    response = Client().get("/api/no/such/thing", HTTP_X_REQUEST_ID="lost-42")

    assert response.status_code == 404
    [line] = [line for line in json_lines() if line["logger"] == "django.request"]
    assert (line["level"], line["status_code"]) == ("WARNING", 404)
    assert line["request_id"] == "lost-42"
    assert (line["method"], line["path"]) == ("GET", "/api/no/such/thing")
    assert "request" not in line


def test_plain_lines_of_django_request_show_the_request_id(rf: RequestFactory) -> None:
    request = rf.get("/x")
    request.request_id = "plain-7"  # type: ignore[attr-defined]  # the attribute RequestIdMiddleware sets
    rec = record(request=request)

    RequestIdFilter().filter(rec)

    assert rec.request_id == "plain-7"


def test_plain_lines_show_the_request_id() -> None:
    config = logging_config(fmt="plain", level="INFO")
    formatter = logging.Formatter(config["formatters"]["plain"]["format"])
    rec = record()
    RequestIdFilter().filter(rec)

    assert formatter.format(rec).endswith("WARNING tests.ops [-] hello world")


def test_settings_log_json_to_stdout_when_debug_is_off() -> None:
    assert not settings.DEBUG
    handler = settings.LOGGING["handlers"]["console"]
    assert handler["formatter"] == "json"
    assert handler["stream"] == "ext://sys.stdout"


# --- policy audit ----------------------------------------------------------------------------


@pytest.fixture
def admin_client(db: None) -> Client:
    root = User.objects.create_superuser(username="ops-root", email="ops@example.com", password="correct-horse-battery")
    client = Client()
    client.force_login(root)
    return client


def policy_form(**fields: str) -> dict[str, str]:
    data = {
        "name": "books-ip",
        "enabled": "on",
        "mode": "enforce",
        "priority": "100",
        "methods": "",
        "match_type": "prefix",
        "pattern": "/api/books",
        "key": "ip",
        "header_name": "",
        "rate": "",
        "algorithm": "sliding_window",
        "limit": "10",
        "period": "60",
        "burst": "",
        "on_store_failure": "allow",
        "overrides-TOTAL_FORMS": "0",
        "overrides-INITIAL_FORMS": "0",
        "overrides-MIN_NUM_FORMS": "0",
        "overrides-MAX_NUM_FORMS": "1000",
    }
    data.update(fields)
    return data


def changes_logged(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == "policy_change"]


def test_an_admin_edit_logs_who_what_and_before_after(
    admin_client: Client, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    policy = RateLimitPolicy.objects.create(name="books-ip", pattern="/api/books", limit=10)
    before = len(changes_logged(json_lines()))

    response = admin_client.post(
        f"/admin/resilience/ratelimitpolicy/{policy.pk}/change/",
        policy_form(limit="25", period="30"),
        HTTP_X_REQUEST_ID="admin-edit-1",
    )

    assert response.status_code == 302, getattr(response, "context", None) and response.context["adminform"].errors
    assert LogEntry.objects.filter(object_id=str(policy.pk)).exists()
    [line] = changes_logged(json_lines())[before:]
    assert line["model"] == "RateLimitPolicy"
    assert line["policy"] == "books-ip"
    assert line["action"] == "updated"
    assert line["user"] == "ops-root"
    assert line["changes"] == {"limit": [10, 25], "period": [60, 30]}
    assert line["request_id"] == "admin-edit-1"


def test_an_admin_delete_logs_the_row_as_it_was(
    admin_client: Client, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    policy = RateLimitPolicy.objects.create(name="doomed", pattern="/api/books", limit=5)

    response = admin_client.post(f"/admin/resilience/ratelimitpolicy/{policy.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    [line] = [line for line in changes_logged(json_lines()) if line["action"] == "deleted"]
    assert (line["policy"], line["user"]) == ("doomed", "ops-root")
    assert line["changes"]["limit"] == [5, None]


def test_changes_outside_a_request_are_logged_without_a_user(
    db: None, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    breaker = CircuitBreakerPolicy.objects.create(name="payments", match_type="code", pattern="")
    breaker.failure_rate = Decimal("50")
    breaker.save()
    policy = RateLimitPolicy.objects.create(name="partners", key="header", header_name="X-App-Id", limit=1)
    RateLimitOverride.objects.create(policy=policy, key_value="secret-app-key", limit=100)

    lines = changes_logged(json_lines())

    created, updated = [line for line in lines if line["model"] == "CircuitBreakerPolicy"]
    assert created["action"] == "created"
    assert created["changes"]["failure_threshold"] == [None, 5]
    assert updated["changes"] == {"failure_rate": ["0.00", "50"]}
    assert updated["user"] is None
    [override] = [line for line in lines if line["model"] == "RateLimitOverride"]
    assert "secret-app-key" not in json.dumps(override), "header values are logged hashed, as stored"
    assert override["policy"].startswith("partners:")


# --- a database outage ----------------------------------------------------------------------------


def test_a_database_outage_is_logged_once_per_interval_with_its_count(
    monkeypatch: pytest.MonkeyPatch, rf: RequestFactory, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    now = [500.0]
    monkeypatch.setattr(logging_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(
        exceptions, "database_outage", Sampled(exceptions.logger, "database_unavailable", interval=10.0)
    )
    down = OperationalError("couldn't get a connection after 2.00 sec\nmore detail")

    def fail() -> Response:
        response = exceptions.problem_exception_handler(down, {"request": rf.get("/api/books")})
        assert response is not None
        assert response.status_code == 503
        assert response._has_been_logged, "django.request must not log it a second time"  # type: ignore[attr-defined]  # set for django.utils.log
        return response

    for _ in range(4):
        fail()
    now[0] += 10.0
    fail()

    lines = [line for line in json_lines() if line.get("event") == "database_unavailable"]
    assert [line["count"] for line in lines] == [1, 4]
    assert {line["level"] for line in lines} == {"WARNING"}
    assert lines[0]["error"] == "couldn't get a connection after 2.00 sec"
    assert not any("exception" in line for line in lines)


@pytest.mark.live
def test_503s_during_a_postgres_outage_are_one_warning_not_two_errors_each(
    live_servers: Callable[..., LiveServer],
) -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    server = live_servers(
        workers=1,
        probe=True,
        env_overrides={"DATABASE_URL": "postgres://postgres@127.0.0.1:1/bookstore", "DB_POOL_TIMEOUT": "0.2"},
    )

    replies = [request(server.port, "/api/books", headers={"X-Request-ID": f"outage-{i}"}) for i in range(4)]

    assert [reply.status for reply in replies] == [503] * 4
    lines = [json.loads(line) for line in server.error_log.read_text().splitlines() if line.startswith("{")]
    outage = [line for line in lines if line.get("event") == "database_unavailable"]
    assert len(outage) == 1, outage
    assert (outage[0]["level"], outage[0]["count"], outage[0]["request_id"]) == ("WARNING", 1, "outage-0")
    assert "exception" not in outage[0]
    assert [line for line in lines if line["logger"] == "django.request"] == []


# --- management commands ----------------------------------------------------------------------------


def test_a_command_prints_only_its_output_on_stdout_and_logs_to_stderr(transactional_db: None) -> None:
    RateLimitPolicy.objects.create(name="cmd-books", pattern="/api/books", limit=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_", "LOG_"))}
    env.update(
        DEBUG="false",
        SECRET_KEY="command-test-secret-key",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        RESILIENCE_KEY_PREFIX=settings.RESILIENCE_KEY_PREFIX,
    )

    done = subprocess.run(
        [sys.executable, "manage.py", "ratelimit", "reset", "--all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == "reset 1 policy(ies)\n"
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(line["event"], line["policy"], line["action"]) for line in logged] == [
        ("policy_change", "cmd-books", "counters reset")
    ]
