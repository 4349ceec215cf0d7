"""Staff edit rate-limit policies in the admin: validation, the rate shortcut, overrides, actions."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from resilience.models import RateLimitOverride, RateLimitPolicy, hash_key_value
from resilience.runtime import get_runtime
from tests.conftest import make_policy

CHANGELIST = "/admin/resilience/ratelimitpolicy/"
ADD = CHANGELIST + "add/"


def change_url(policy: RateLimitPolicy) -> str:
    return f"{CHANGELIST}{policy.pk}/change/"


@pytest.fixture
def admin_client(db: None) -> Client:
    superuser = User.objects.create_superuser(
        username="root", email="root@example.com", password="correct-horse-battery"
    )
    client = Client()
    client.force_login(superuser)
    return client


def form_data(overrides: list[dict[str, str]] | None = None, **fields: Any) -> dict[str, Any]:
    """Return the POST body of the policy change form, inline overrides included."""
    data: dict[str, Any] = {
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
    }
    data.update({k: v for k, v in fields.items() if v is not None})
    for name in [k for k, v in fields.items() if v is None]:
        data.pop(name, None)  # an unchecked checkbox is simply absent
    overrides = overrides or []
    data.update(
        {
            "overrides-TOTAL_FORMS": str(len(overrides)),
            "overrides-INITIAL_FORMS": "0",
            "overrides-MIN_NUM_FORMS": "0",
            "overrides-MAX_NUM_FORMS": "1000",
        }
    )
    for i, override in enumerate(overrides):
        for name, value in override.items():
            data[f"overrides-{i}-{name}"] = value
    return data


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, "an invalid form is shown again, not a redirect or a 500"
    return dict(response.context["adminform"].form.errors)


def action(admin_client: Client, name: str, *policies: RateLimitPolicy) -> Any:
    response = admin_client.post(
        CHANGELIST, {"action": name, "_selected_action": [str(p.pk) for p in policies], "index": "0"}
    )
    assert response.status_code == 302
    return response


def history(policy: RateLimitPolicy) -> list[str]:
    return list(
        LogEntry.objects.filter(object_id=str(policy.pk), action_flag=CHANGE)
        .order_by("pk")
        .values_list("change_message", flat=True)
    )


# --- validation -----------------------------------------------------------------------------------


def test_add_form_reports_a_bad_regex_on_the_pattern_field(admin_client: Client) -> None:
    response = admin_client.post(ADD, form_data(match_type="regex", pattern=r"^/api/(books"))

    errors = form_errors(response)
    assert list(errors) == ["pattern"]
    assert "regular expression" in errors["pattern"][0]
    assert not RateLimitPolicy.objects.exists()


@pytest.mark.parametrize("rate", ["lots", "100", "100/fortnight", "0/0s", "5000000000/minute"])
def test_add_form_reports_a_bad_rate_on_the_rate_field(admin_client: Client, rate: str) -> None:
    response = admin_client.post(ADD, form_data(rate=rate))

    assert "rate" in form_errors(response)
    assert not RateLimitPolicy.objects.exists()


def test_add_form_requires_a_header_name_for_a_header_policy(admin_client: Client) -> None:
    response = admin_client.post(ADD, form_data(key="header", header_name=""))

    assert list(form_errors(response)) == ["header_name"]
    assert not RateLimitPolicy.objects.exists()


@pytest.mark.parametrize("algorithm", ["sliding_window", "fixed_window"])
def test_add_form_refuses_a_burst_outside_a_token_bucket(admin_client: Client, algorithm: str) -> None:
    response = admin_client.post(ADD, form_data(algorithm=algorithm, burst="20"))

    assert list(form_errors(response)) == ["burst"]
    assert not RateLimitPolicy.objects.exists()


def test_add_form_accepts_a_burst_on_a_token_bucket(admin_client: Client) -> None:
    response = admin_client.post(ADD, form_data(algorithm="token_bucket", burst="20"))

    assert response.status_code == 302
    assert RateLimitPolicy.objects.get(name="books-ip").burst == 20


def test_add_form_needs_a_limit_or_a_rate(admin_client: Client) -> None:
    response = admin_client.post(ADD, form_data(limit=""))

    assert "limit" in form_errors(response)


@pytest.mark.parametrize(
    ("rate", "limit", "period"),
    [("100/minute", 100, 60), ("5/10s", 5, 10), ("1000/hour", 1000, 3600)],
)
def test_rate_shortcut_sets_limit_and_period(admin_client: Client, rate: str, limit: int, period: int) -> None:
    response = admin_client.post(ADD, form_data(rate=rate, limit="", period="1"))

    assert response.status_code == 302
    policy = RateLimitPolicy.objects.get(name="books-ip")
    assert (policy.limit, policy.period) == (limit, period)


def test_rate_shortcut_on_the_change_form_updates_an_existing_policy(admin_client: Client) -> None:
    policy = make_policy(name="books-ip", limit=10, period=60)

    response = admin_client.post(change_url(policy), form_data(rate="100/minute"))

    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.limit, policy.period) == (100, 60)


def test_saved_policy_is_enforced_by_the_api(admin_client: Client) -> None:
    with_callbacks = admin_client.post(ADD, form_data(rate="2/minute"))
    assert with_callbacks.status_code == 302
    get_runtime().invalidate()  # on_commit does not fire inside the test's transaction
    client = APIClient()

    assert [client.get("/api/books").status_code for _ in range(3)] == [200, 200, 429]


# --- overrides ------------------------------------------------------------------------------------


def test_header_override_inline_is_stored_hashed(admin_client: Client) -> None:
    response = admin_client.post(
        ADD,
        form_data(
            key="header",
            header_name="X-App-Id",
            overrides=[{"key_value": "partner-secret", "limit": "100", "note": "partner"}],
        ),
    )

    assert response.status_code == 302
    override = RateLimitPolicy.objects.get(name="books-ip").overrides.get()
    assert override.key_value == hash_key_value("partner-secret")
    assert "partner-secret" not in override.key_value
    assert override.limit == 100
    # ... and the hashed override applies to requests carrying the raw value.
    get_runtime().invalidate()
    client = APIClient()
    statuses = [client.get("/api/books", HTTP_X_APP_ID="partner-secret").status_code for _ in range(11)]
    assert statuses == [200] * 11


@pytest.mark.parametrize(
    ("key", "header_name", "value"),
    [("header", "X-App-Id", "partner-secret"), ("ip", "", "203.0.113.66"), ("user", "", "vip-reader")],
)
def test_repeating_an_existing_override_is_a_form_error(
    admin_client: Client, key: str, header_name: str, value: str
) -> None:
    policy = make_policy(name="books", key=key, header_name=header_name, limit=5)
    RateLimitOverride.objects.create(policy=policy, key_value=value, limit=50)
    data = form_data(
        name="books",
        key=key,
        header_name=header_name,
        limit="5",
        overrides=[{"key_value": value, "limit": "60", "note": ""}],
    )

    response = admin_client.post(change_url(policy), data)

    assert response.status_code == 200
    [inline] = response.context["inline_admin_formsets"]
    assert "key_value" in inline.formset.forms[0].errors
    assert list(policy.overrides.values_list("limit", flat=True)) == [50]


def test_ip_override_inline_is_stored_as_given(admin_client: Client) -> None:
    response = admin_client.post(
        ADD, form_data(overrides=[{"key_value": "203.0.113.66", "limit": "0", "note": "abuse"}])
    )

    assert response.status_code == 302
    override = RateLimitPolicy.objects.get(name="books-ip").overrides.get()
    assert (override.key_value, override.limit) == ("203.0.113.66", 0)


# --- actions and their history --------------------------------------------------------------------


def test_disable_and_enable_actions_toggle_and_are_logged(admin_client: Client) -> None:
    policy = make_policy(name="books-ip", limit=0)
    client = APIClient()
    assert client.get("/api/books").status_code == 429

    action(admin_client, "disable", policy)
    policy.refresh_from_db()
    assert policy.enabled is False
    get_runtime().invalidate()
    assert client.get("/api/books").status_code == 200

    action(admin_client, "enable", policy)
    policy.refresh_from_db()
    assert policy.enabled is True
    get_runtime().invalidate()
    assert client.get("/api/books").status_code == 429

    assert history(policy) == ["Disabled", "Enabled"]


def test_dry_run_and_enforce_actions_switch_mode_and_are_logged(admin_client: Client) -> None:
    policy = make_policy(name="books-ip", limit=0)
    client = APIClient()

    action(admin_client, "dry_run", policy)
    policy.refresh_from_db()
    assert policy.mode == RateLimitPolicy.Mode.DRY_RUN
    get_runtime().invalidate()
    assert client.get("/api/books").status_code == 200

    action(admin_client, "enforce", policy)
    policy.refresh_from_db()
    assert policy.mode == RateLimitPolicy.Mode.ENFORCE
    get_runtime().invalidate()
    assert client.get("/api/books").status_code == 429

    assert history(policy) == ["Switched to dry run", "Enforced"]


def test_actions_apply_to_every_selected_policy(admin_client: Client) -> None:
    first = make_policy(name="first", limit=5)
    second = make_policy(name="second", limit=5)
    untouched = make_policy(name="untouched", limit=5)

    action(admin_client, "disable", first, second)

    assert set(RateLimitPolicy.objects.filter(enabled=False).values_list("name", flat=True)) == {
        "first",
        "second",
    }
    assert history(first) == history(second) == ["Disabled"]
    assert history(untouched) == []


def test_reset_counters_action_frees_exhausted_clients(
    admin_client: Client, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    policy = make_policy(name="books-ip", limit=2)
    client = APIClient()
    assert [client.get("/api/books").status_code for _ in range(3)] == [200, 200, 429]

    with django_capture_on_commit_callbacks(execute=True):
        action(admin_client, "reset_counters", policy)

    assert client.get("/api/books").status_code == 200
    policy.refresh_from_db()
    assert policy.epoch == 1
    assert history(policy) == ["Counters reset"]


def test_history_page_shows_action_entries(admin_client: Client) -> None:
    policy = make_policy(name="books-ip", limit=5)
    action(admin_client, "disable", policy)

    response = admin_client.get(f"{CHANGELIST}{policy.pk}/history/")

    assert response.status_code == 200
    assert "Disabled" in response.content.decode()


# --- the list -------------------------------------------------------------------------------------


def test_changelist_shows_live_usage_of_a_global_policy(admin_client: Client) -> None:
    make_policy(name="ceiling", key="global", limit=10, period=3600)
    make_policy(name="books-ip", limit=10)
    client = APIClient()
    for i in range(3):
        assert client.get("/api/books", REMOTE_ADDR=f"198.51.100.{i + 1}").status_code == 200

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Live usage" in page
    assert "3 of 10 used" in page
    assert "books-ip" in page


def test_changelist_renders_with_filters_and_search(admin_client: Client) -> None:
    make_policy(name="books-ip", limit=10)
    make_policy(name="orders-ip", pattern="/api/orders", limit=10, enabled=False)

    filtered = admin_client.get(CHANGELIST, {"enabled__exact": "1", "q": "ip"})

    assert filtered.status_code == 200
    names = [p.name for p in filtered.context["cl"].result_list]
    assert names == ["books-ip"]


def burst_cells(html: str) -> dict[str, str]:
    """Return the changelist's burst column by policy name."""
    rows = re.findall(r'<a href="[^"]+/change/">([^<]+)</a>.*?class="field-burst_display">([^<]*)</td>', html, re.S)
    return dict(rows)


def test_changelist_shows_a_token_buckets_burst_as_clients_see_it(admin_client: Client) -> None:
    make_policy(name="bucket-ip", algorithm="token_bucket", limit=100, period=60, burst=20)
    make_policy(name="window-ip", pattern="/api/orders", limit=10, period=60)
    stated = APIClient().get("/api/books")["RateLimit-Policy"]

    cells = burst_cells(admin_client.get(CHANGELIST).content.decode())

    # The q and w that RateLimit-Policy states: the burst, and the seconds it takes to refill.
    assert stated == '"bucket-ip";q=20;w=12'
    assert cells == {"bucket-ip": "burst 20, refills in 12 s", "window-ip": "—"}
