"""`manage.py ratelimit status|reset`: what operators see and free from a shell."""

from __future__ import annotations

import re
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from accounts.models import User
from resilience.models import RateLimitPolicy
from tests.conftest import client_for, make_policy

A, B = "192.0.2.1", "192.0.2.2"


def ratelimit(*args: str) -> str:
    out = StringIO()
    call_command("ratelimit", *args, stdout=out)
    return out.getvalue()


def statuses(count: int, address: str = A, client: APIClient | None = None) -> list[int]:
    client = client or APIClient()
    return [client.get("/api/books", REMOTE_ADDR=address).status_code for _ in range(count)]


# --- status ---------------------------------------------------------------------------------------


def test_status_lists_every_policy(db: None) -> None:
    make_policy(name="books-ip", limit=10, period=60)
    make_policy(name="orders-user", key="user", pattern="/api/orders", limit=5, enabled=False)
    make_policy(name="app", key="header", header_name="X-App-Id", limit=7, mode="dry_run")

    out = ratelimit("status")

    lines = out.splitlines()
    assert len(lines) == 4  # three policies and the summary
    assert lines[-1] == "3 policy(ies)"
    books = next(line for line in lines if line.startswith("books-ip"))
    assert "10/60s" in books
    assert "key=ip" in books
    assert "prefix:/api/books" in books
    orders = next(line for line in lines if line.startswith("orders-user"))
    assert " off " in orders
    assert "key=user" in orders
    app = next(line for line in lines if line.startswith("app"))
    assert "dry_run" in app
    assert "key=header:X-App-Id" in app


def test_status_of_one_policy_shows_a_clients_usage(db: None) -> None:
    make_policy(name="books-ip", limit=5)
    make_policy(name="other", limit=5, pattern="/api/orders")
    assert statuses(2) == [200, 200]

    out = ratelimit("status", "books-ip", "--key", A)

    assert "other" not in out
    assert "usage: 2/5" in out


def test_status_shows_global_usage(db: None) -> None:
    make_policy(name="ceiling", key="global", limit=10)
    statuses(1, A)
    statuses(2, B)

    assert "usage: 3/10" in ratelimit("status")


def test_status_of_an_unknown_policy_is_an_error(db: None) -> None:
    with pytest.raises(CommandError, match="nope"):
        ratelimit("status", "nope")


# --- reset ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sliding_window", "token_bucket", "fixed_window"])
def test_reset_one_key_frees_that_client_only(
    db: None, django_capture_on_commit_callbacks: Callable[..., Any], algorithm: str
) -> None:
    make_policy(name="books-ip", limit=2, algorithm=algorithm)
    assert statuses(3, A) == [200, 200, 429]
    assert statuses(3, B) == [200, 200, 429]

    with django_capture_on_commit_callbacks(execute=True):
        out = ratelimit("reset", "books-ip", "--key", A)

    assert "reset key" in out
    assert statuses(3, A) == [200, 200, 429]
    assert statuses(1, B) == [429]


@pytest.mark.parametrize("key", ["2001:db8:1:2::1", "2001:db8:1:2::/64", "2001:DB8:1:2:0:0:0:5"])
def test_reset_one_ipv6_client_frees_its_slash_64(
    db: None, django_capture_on_commit_callbacks: Callable[..., Any], key: str
) -> None:
    make_policy(name="books-ip", limit=1)
    assert statuses(2, "2001:db8:1:2::1") == [200, 429]
    assert statuses(2, "2001:db8:1:3::1") == [200, 429]

    with django_capture_on_commit_callbacks(execute=True):
        ratelimit("reset", "books-ip", "--key", key)

    assert statuses(2, "2001:db8:1:2::99") == [200, 429]
    assert statuses(1, "2001:db8:1:3::1") == [429]


def test_status_of_an_ipv6_client_reads_its_slash_64(db: None) -> None:
    make_policy(name="books-ip", limit=5)
    assert statuses(2, "2001:db8:1:2::1") == [200, 200]

    assert "usage: 2/5" in ratelimit("status", "books-ip", "--key", "2001:db8:1:2::abcd")


def test_reset_one_user_by_id(
    make_user: Callable[..., User], django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    make_policy(name="books-user", key="user", limit=1)
    alice, bob = make_user(), make_user()
    alice_client, bob_client = client_for(alice), client_for(bob)
    assert statuses(2, client=alice_client) == [200, 429]
    assert statuses(2, client=bob_client) == [200, 429]

    with django_capture_on_commit_callbacks(execute=True):
        ratelimit("reset", "books-user", "--key", str(alice.pk))

    assert statuses(1, client=alice_client) == [200]
    assert statuses(1, client=bob_client) == [429]


def test_reset_anonymous_client_of_a_user_policy_by_ip(
    db: None, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    make_policy(name="books-user", key="user", limit=1)
    assert statuses(2, A) == [200, 429]
    assert statuses(2, B) == [200, 429]

    with django_capture_on_commit_callbacks(execute=True):
        ratelimit("reset", "books-user", "--key", A)

    assert statuses(1, A) == [200]
    assert statuses(1, B) == [429]


def test_reset_one_header_value(db: None, django_capture_on_commit_callbacks: Callable[..., Any]) -> None:
    make_policy(name="app", key="header", header_name="X-App-Id", limit=1)
    client = APIClient()
    assert [client.get("/api/books", HTTP_X_APP_ID="app-one").status_code for _ in range(2)] == [200, 429]

    with django_capture_on_commit_callbacks(execute=True):
        ratelimit("reset", "app", "--key", "app-one")

    assert client.get("/api/books", HTTP_X_APP_ID="app-one").status_code == 200


def test_reset_without_key_frees_everyone(db: None, django_capture_on_commit_callbacks: Callable[..., Any]) -> None:
    policy = make_policy(name="books-ip", limit=1)
    assert statuses(2, A) == [200, 429]
    assert statuses(2, B) == [200, 429]

    with django_capture_on_commit_callbacks(execute=True):
        ratelimit("reset", "books-ip")

    policy.refresh_from_db()
    assert policy.epoch == 1
    assert statuses(2, A) == [200, 429]
    assert statuses(2, B) == [200, 429]


def test_reset_all_frees_every_policy(db: None, django_capture_on_commit_callbacks: Callable[..., Any]) -> None:
    make_policy(name="list", match_type="route", pattern="books-list", limit=1)
    make_policy(name="search", match_type="route", pattern="books-search", limit=1)
    client = APIClient()
    assert [client.get("/api/books").status_code for _ in range(2)] == [200, 429]
    assert [client.get("/api/books/search?q=x").status_code for _ in range(2)] == [200, 429]

    with django_capture_on_commit_callbacks(execute=True):
        ratelimit("reset", "--all")

    assert set(RateLimitPolicy.objects.values_list("epoch", flat=True)) == {1}
    assert [client.get("/api/books").status_code for _ in range(2)] == [200, 429]
    assert [client.get("/api/books/search?q=x").status_code for _ in range(2)] == [200, 429]


def test_reset_leaves_other_policies_alone(db: None, django_capture_on_commit_callbacks: Callable[..., Any]) -> None:
    make_policy(name="books-ip", limit=1)
    other = make_policy(name="other", limit=1, pattern="/api/orders")

    with django_capture_on_commit_callbacks(execute=True):
        ratelimit("reset", "books-ip")

    other.refresh_from_db()
    assert other.epoch == 0


def test_reset_of_an_unknown_policy_is_an_error(db: None) -> None:
    make_policy(name="books-ip", limit=1)

    with pytest.raises(CommandError, match="nope"):
        ratelimit("reset", "nope")
    assert RateLimitPolicy.objects.get().epoch == 0


def test_reset_needs_a_policy_or_all(db: None) -> None:
    make_policy(name="books-ip", limit=1)

    with pytest.raises(CommandError, match="--all"):
        ratelimit("reset")
    assert RateLimitPolicy.objects.get().epoch == 0


def test_options_may_follow_or_precede_the_policy_name(db: None) -> None:
    make_policy(name="books-ip", limit=2)
    assert statuses(3, A) == [200, 200, 429]
    status_after = ratelimit("status", "books-ip", "--key", A)
    status_before = ratelimit("status", "--key", A, "books-ip")

    # The two runs are moments apart: only the seconds to the reset may differ between them.
    def timeless(status: str) -> str:
        return re.sub(r"reset in [0-9.]+s", "reset in Ns", status)

    assert timeless(status_after) == timeless(status_before)
    assert "usage: 2/2" in status_after


def test_status_shows_a_token_buckets_burst_and_refill_time(db: None) -> None:
    make_policy(name="bucket-ip", algorithm="token_bucket", limit=20, period=600, burst=3)
    make_policy(name="window-ip", limit=10, period=60)

    lines = {line.split()[0]: line for line in ratelimit("status").splitlines()[:-1]}

    # What its clients see as q=3;w=90 in RateLimit-Policy: one attempt every 30 s refills 3 in 90 s.
    assert "(burst 3, refills in 90 s)" in lines["bucket-ip"]
    assert "burst" not in lines["window-ip"]
