"""Rate limits in code by name: limit("…", key=…) under the admin's policies of match type "code"."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from accounts.models import User
from resilience.http.limits import LimitRefused, limit
from resilience.models import RateLimitOverride, RateLimitPolicy
from resilience.runtime import get_runtime
from tests.resilience.test_ratelimit_admin import CHANGELIST, change_url, form_data
from tests.resilience.test_ratelimit_middleware import (  # noqa: F401 - dead_store is a fixture
    QUOTA_EXCEEDED,
    REDUCED_CAPACITY,
    dead_store,
    decisions,
    make_policy,
    ratelimits,
)


def code_policy(name: str = "sending-user", code: str = "sending", **fields: object) -> RateLimitPolicy:
    fields.setdefault("key", "user")
    fields.setdefault("limit", 2)
    return make_policy(name=name, match_type="code", pattern=code, **fields)


def attempts(name: str, keys: list[str]) -> list[int]:
    """Return, per key, 200 if the block ran under limit(name, key) and the refusal's status otherwise."""
    outcomes = []
    for key in keys:
        try:
            with limit(name, key=key):
                outcomes.append(200)
        except LimitRefused as refused:
            outcomes.append(refused.response.status_code)
    return outcomes


def test_a_block_runs_until_its_key_is_spent_and_is_then_refused_with_the_middlewares_429(db: None) -> None:
    code_policy()

    assert attempts("sending", ["alice", "bob", "alice"]) == [200, 200, 200]
    with pytest.raises(LimitRefused) as refused, limit("sending", key="alice"):
        pytest.fail("a refused block must not run")

    response = refused.value.response
    body = json.loads(response.content)
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    assert body["type"] == QUOTA_EXCEEDED
    assert body["violated-policies"] == ["sending-user"]
    assert dict(ratelimits(response))["sending-user"]["r"] == 0
    assert int(response["Retry-After"]) >= 1
    assert attempts("sending", ["bob"]) == [200], "another key keeps its own count"


def test_keys_are_compared_as_usernames_are_and_never_stored_raw(db: None) -> None:
    code_policy()

    assert attempts("sending", ["Alice", "ALICE", "ａｌｉｃｅ"]) == [200, 200, 429]
    stored = redis.Redis.from_url(settings.REDIS_URL).keys(f"{settings.RESILIENCE_KEY_PREFIX}*")
    assert stored, "the limit is counted in Redis"
    assert not [k for k in stored if b"alice" in k.lower()]


def test_as_a_decorator_the_key_may_come_from_the_arguments(db: None) -> None:
    code_policy()
    sent: list[str] = []

    @limit("sending", key=lambda to, body: to)
    def send(to: str, body: str) -> None:
        sent.append(to)

    send("carol", "hi")
    send("carol", "again")
    with pytest.raises(LimitRefused):
        send("carol", "a third time")
    send("dave", "hi")

    assert sent == ["carol", "carol", "dave"]


def test_policies_sharing_a_name_count_by_ip_and_by_key_and_the_tightest_refuses(db: None) -> None:
    code_policy(name="sending-user", limit=3)
    code_policy(name="sending-ip", key="ip", limit=2)
    outside_a_request = attempts("sending", ["erin", "erin", "erin", "erin"])

    assert outside_a_request == [200, 200, 200, 429], "outside a request only the per-key policy applies"


def test_an_override_names_the_key_as_code_passes_it(db: None) -> None:
    policy = code_policy(limit=1)
    RateLimitOverride.objects.create(policy=policy, key_value="Partner", limit=3)
    get_runtime().invalidate()

    assert attempts("sending", ["partner"] * 4) == [200, 200, 200, 429]
    assert attempts("sending", ["someone"] * 2) == [200, 429]


def test_without_an_enabled_policy_of_that_name_everything_passes(db: None) -> None:
    code_policy(code="other")

    assert attempts("sending", ["alice"] * 5) == [200] * 5


@pytest.fixture
def admin_client(db: None) -> Client:
    root = User.objects.create_superuser(username="root", email="root@example.com", password="correct-horse-battery")
    client = Client()
    client.force_login(root)
    return client


def test_a_code_policy_made_in_the_admin_is_enforced_and_disabling_it_there_lifts_it(admin_client: Client) -> None:
    added = admin_client.post(
        CHANGELIST + "add/", form_data(name="sending-user", match_type="code", pattern="sending", key="user", limit="1")
    )
    assert added.status_code == 302, added.content
    get_runtime().invalidate()  # on_commit does not fire inside the test's transaction
    assert attempts("sending", ["alice", "alice"]) == [200, 429]

    policy = RateLimitPolicy.objects.get(name="sending-user")
    disabled = admin_client.post(CHANGELIST, {"action": "disable", "_selected_action": [policy.pk]})
    assert disabled.status_code == 302
    get_runtime().invalidate()

    assert attempts("sending", ["alice"] * 3) == [200] * 3


def test_a_code_policy_in_dry_run_counts_what_it_would_refuse_and_refuses_nothing(admin_client: Client) -> None:
    policy = code_policy(limit=1)
    changed = admin_client.post(
        change_url(policy),
        form_data(name=policy.name, match_type="code", pattern="sending", key="user", limit="1", mode="dry_run"),
    )
    assert changed.status_code == 302, changed.content
    get_runtime().invalidate()
    would_limit = decisions(policy.name, "dry_run_would_limit")

    assert attempts("sending", ["alice"] * 3) == [200] * 3
    assert decisions(policy.name, "dry_run_would_limit") - would_limit == 2


def test_the_admin_wants_a_name_for_a_code_policy(admin_client: Client) -> None:
    response = admin_client.post(
        CHANGELIST + "add/", form_data(name="sending-user", match_type="code", pattern="/api/x y", key="user")
    )

    assert response.status_code == 200
    assert "pattern" in response.context["adminform"].form.errors
    assert not RateLimitPolicy.objects.exists()


@pytest.mark.usefixtures("dead_store")
def test_store_down_an_allow_policy_limits_in_process(db: None) -> None:
    code_policy(limit=2, on_store_failure="allow")
    errors = decisions("sending-user", "store_error")

    assert attempts("sending", ["alice"] * 3) == [200, 200, 429]
    assert decisions("sending-user", "store_error") - errors == 3


@pytest.mark.usefixtures("dead_store")
def test_store_down_a_deny_policy_refuses_with_the_middlewares_503(db: None) -> None:
    code_policy(limit=100, on_store_failure="deny")

    with pytest.raises(LimitRefused) as refused, limit("sending", key="alice"):
        pytest.fail("a fail-closed limit without its store must not run the block")

    response = refused.value.response
    assert response.status_code == 503
    assert json.loads(response.content)["type"] == REDUCED_CAPACITY
    assert int(response["Retry-After"]) >= 1


def test_an_operator_unlocks_one_key_by_naming_it_as_code_passes_it(
    db: None, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    code_policy(limit=1)
    assert attempts("sending", ["alice", "alice", "bob", "bob"]) == [200, 429, 200, 429]

    with django_capture_on_commit_callbacks(execute=True):
        call_command("ratelimit", "reset", "sending-user", "--key", "Alice")

    assert attempts("sending", ["alice", "bob"]) == [200, 429]
