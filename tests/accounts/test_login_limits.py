"""Sign-in and registration limits: per account as well as per address, decided before any password hash."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis
from django.http import HttpResponse
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from resilience.runtime import get_runtime
from tests.accounts.counting_hasher import HASHER, hashes
from tests.resilience.test_ratelimit_middleware import assert_quota_exceeded, names_in_headers

TOKEN = "/api/accounts/token"
REGISTER = "/api/accounts/register"
ADMIN_LOGIN = "/admin/login/"
PASSWORD = "correct-horse-battery"
WRONG = "not-the-password"

pytestmark = pytest.mark.default_policies


@pytest.fixture(autouse=True)
def _behind_one_proxy(settings: object, db: None) -> None:
    """Clients behind one proxy, counted hashes, and the default policies' counters from zero.

    The default rows keep their ids from test to test (the migration made them), so their
    counters in Redis would carry over from an earlier test.
    """
    settings.TRUSTED_PROXY_COUNT = 1  # type: ignore[attr-defined]
    settings.PASSWORD_HASHERS = [HASHER]  # type: ignore[attr-defined]
    client = redis.Redis.from_url(settings.REDIS_URL)  # type: ignore[attr-defined]
    counters = client.keys(f"{settings.RESILIENCE_KEY_PREFIX}rl:*")  # type: ignore[attr-defined]
    if counters:
        client.delete(*counters)
    client.close()
    get_runtime().invalidate()


def ip(n: int) -> str:
    return f"203.0.113.{n}"


def sign_in(username: str, password: str, n: int) -> HttpResponse:
    """Ask for a token as client n (its own address, through the proxy)."""
    body = {"username": username, "password": password}
    return APIClient().post(TOKEN, body, format="json", HTTP_X_FORWARDED_FOR=ip(n))


# --- the token sign-in -----------------------------------------------------------------------------


def test_the_eleventh_guess_at_one_account_is_refused_from_whatever_address(make_user: Callable[..., User]) -> None:
    victim, other = make_user(username="victim"), make_user(username="other")

    guesses = [sign_in(victim.username, WRONG, n).status_code for n in range(1, 11)]
    refused = sign_in(victim.username.upper(), WRONG, 11)

    assert guesses == [401] * 10, "ten addresses, one guess each: the per-address limit never saw a second"
    params = assert_quota_exceeded(refused, ["login-user"])
    assert params["t"] >= 1
    assert "login-ip" in names_in_headers(refused), "the per-address limit that admitted it is shown too"
    assert sign_in(other.username, PASSWORD, 12).status_code == 200, "another account is not locked"


def test_guessing_by_email_counts_against_the_account_it_names(make_user: Callable[..., User]) -> None:
    victim = make_user(username="victim", email="victim@example.com")

    for n in range(1, 6):
        assert sign_in("victim@example.com", WRONG, n).status_code == 401
    for n in range(6, 11):
        assert sign_in("victim", WRONG, n).status_code == 401

    assert sign_in("VICTIM@example.com", WRONG, 11).status_code == 429
    assert victim.check_password(PASSWORD)


def test_a_refused_guess_hashes_no_password(make_user: Callable[..., User]) -> None:
    victim = make_user(username="victim")
    for n in range(1, 11):
        sign_in(victim.username, WRONG, n)
    before = hashes()

    statuses = [sign_in(victim.username, PASSWORD if n % 2 else WRONG, n).status_code for n in range(11, 31)]

    assert statuses == [429] * 20
    assert hashes() == before, "a refused attempt must cost no hash"


def test_an_admitted_sign_in_carries_both_limits_fields(make_user: Callable[..., User]) -> None:
    user = make_user(username="reader")

    response = sign_in(user.username, PASSWORD, 1)

    assert response.status_code == 200
    assert {"login-ip", "login-user"} <= set(names_in_headers(response))


# --- the admin's sign-in -------------------------------------------------------------------------


def admin_sign_in(username: str, password: str, n: int) -> HttpResponse:
    """Post the admin's own login form, as a browser would, from client n."""
    client = Client(enforce_csrf_checks=True, HTTP_X_FORWARDED_FOR=ip(n))
    page = client.get(ADMIN_LOGIN + "?next=/admin/")
    assert page.status_code == 200
    form = {
        "csrfmiddlewaretoken": page.context["csrf_token"],
        "username": username,
        "password": password,
        "next": "/admin/",
    }
    return client.post(ADMIN_LOGIN + "?next=/admin/", form)


def assert_refused_page(response: HttpResponse, policy: str) -> None:
    assert response.status_code == 429
    assert response["Content-Type"].startswith("text/html")
    assert b"Too many sign-in attempts" in response.content
    assert int(response["Retry-After"]) >= 1
    assert policy in names_in_headers(response)


def test_the_admin_sign_in_refuses_the_eleventh_guess_at_one_username(make_user: Callable[..., User]) -> None:
    staff = make_user(role=User.Role.STAFF, username="boss")
    other = make_user(role=User.Role.STAFF, username="deputy")
    before = hashes()

    guesses = [admin_sign_in("boss", WRONG, n) for n in range(1, 11)]
    refused = admin_sign_in("Boss", PASSWORD, 11)

    assert [g.status_code for g in guesses] == [200] * 10  # the form again, "enter a correct username and password"
    assert_refused_page(refused, "admin-login-user")
    assert hashes() - before == 10, "the refused attempt hashed nothing"
    signed_in = admin_sign_in(other.username, PASSWORD, 12)
    assert signed_in.status_code == 302
    assert signed_in["Location"] == "/admin/"
    assert staff.check_password(PASSWORD)


def test_the_admin_sign_in_refuses_one_address_after_its_burst(make_user: Callable[..., User]) -> None:
    make_user(role=User.Role.STAFF, username="boss")

    statuses = [admin_sign_in(f"name{i}", WRONG, 1).status_code for i in range(5)]
    refused = admin_sign_in("boss", PASSWORD, 1)

    assert statuses == [200] * 5
    assert_refused_page(refused, "admin-login-ip")
    assert admin_sign_in("boss", PASSWORD, 2).status_code == 302, "another address signs in"


# --- registration ------------------------------------------------------------------------------


def register(username: str, email: str, n: int = 1) -> HttpResponse:
    body = {"username": username, "email": email, "password": PASSWORD}
    return APIClient().post(REGISTER, body, format="json", HTTP_X_FORWARDED_FOR=ip(n))


def test_registration_from_one_address_is_refused_after_ten(db: None) -> None:
    statuses = [register(f"reader{i}", f"reader{i}@example.com").status_code for i in range(10)]
    refused = register("reader10", "reader10@example.com")

    assert statuses == [202] * 10
    assert_quota_exceeded(refused, ["register-ip"])
    assert not User.objects.filter(username="reader10").exists()
    assert register("reader10", "reader10@example.com", n=2).status_code == 202


@pytest.mark.parametrize("taken", ["username", "email"])
def test_a_taken_username_or_email_gets_the_answer_a_free_one_gets(make_user: Callable[..., User], taken: str) -> None:
    make_user(username="reader", email="reader@example.com")
    before = hashes()
    free = register("newcomer", "newcomer@example.com", n=1)
    hashed_free = hashes() - before
    clash = {"username": ("Reader", "elsewhere@example.com"), "email": ("elsewhere", "READER@example.com")}[taken]
    before = hashes()

    answer = register(*clash, n=2)

    assert (
        (answer.status_code, answer["Content-Type"])
        == (free.status_code, free["Content-Type"])
        == (
            202,
            "application/json",
        )
    )
    free_body, answer_body = json.loads(free.content), json.loads(answer.content)
    assert set(answer_body) == set(free_body) == {"username", "email", "detail"}
    assert answer_body["detail"] == free_body["detail"]
    assert hashes() - before == hashed_free == 1, "the same password work either way"
    assert User.objects.count() == 2
