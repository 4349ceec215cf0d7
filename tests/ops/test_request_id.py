"""X-Request-ID: echoed when sane, generated otherwise, on every response including refusals."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from bookstore.request_id import get_request_id
from resilience.models import RateLimitPolicy
from resilience.runtime import get_runtime

GENERATED = re.compile(r"[0-9a-f]{32}")


def test_a_sane_incoming_id_is_echoed() -> None:
    response = Client().get("/health/live", HTTP_X_REQUEST_ID="edge-1.2_abc")

    assert response["X-Request-ID"] == "edge-1.2_abc"


@pytest.mark.parametrize(
    "incoming",
    [None, "", "x" * 65, "has space", "semi;colon", "new\nline", "ünicode"],
)
def test_a_missing_or_unsafe_id_is_replaced(incoming: str | None) -> None:
    headers = {} if incoming is None else {"HTTP_X_REQUEST_ID": incoming}

    response = Client().get("/health/live", **headers)

    assert GENERATED.fullmatch(response["X-Request-ID"])


def test_each_request_gets_its_own_id() -> None:
    client = Client()

    assert client.get("/health/live")["X-Request-ID"] != client.get("/health/live")["X-Request-ID"]


def test_the_id_is_on_errors_too(db: None) -> None:
    response = Client().get("/no/such/page", HTTP_X_REQUEST_ID="lost-1")

    assert response.status_code == 404
    assert response["X-Request-ID"] == "lost-1"


def test_a_rate_limited_answer_carries_the_id_and_is_logged_with_it(
    db: None, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    RateLimitPolicy.objects.create(name="closed-shop", match_type="prefix", pattern="/api/books", key="ip", limit=0)
    get_runtime().invalidate()

    response = Client().get("/api/books", HTTP_X_REQUEST_ID="limited-1")

    assert response.status_code == 429
    assert response["X-Request-ID"] == "limited-1"
    [line] = [line for line in json_lines() if line.get("event") == "rate_limited"]
    assert line["request_id"] == "limited-1"
    assert line["policy"] == "closed-shop"
    assert (line["method"], line["path"], line["level"]) == ("GET", "/api/books", "WARNING")


def test_rate_limited_lines_are_sampled_once_a_second_per_policy(
    db: None, json_lines: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from resilience.ops import audit

    now = [1000.0]
    monkeypatch.setattr(audit.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(audit, "_last_logged", {})
    monkeypatch.setattr(audit, "_suppressed", {})
    RateLimitPolicy.objects.create(name="sampled", match_type="prefix", pattern="/api/books", key="ip", limit=0)
    get_runtime().invalidate()
    client = Client()

    for _ in range(5):
        assert client.get("/api/books").status_code == 429
    now[0] += 1.0
    assert client.get("/api/books").status_code == 429

    lines = [line for line in json_lines() if line.get("event") == "rate_limited"]
    assert [line["suppressed"] for line in lines] == [0, 4]


def test_no_request_id_outside_a_request() -> None:
    assert get_request_id() is None
