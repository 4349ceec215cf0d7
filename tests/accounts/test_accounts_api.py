"""Registration, tokens and /me over the HTTP API."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from django.conf import settings
from django.http import HttpResponse
from knox.models import AuthToken
from rest_framework.test import APIClient

from accounts.models import User
from tests.conftest import assert_problem, client_for

REGISTER = "/api/accounts/register"
TOKEN = "/api/accounts/token"
ME = "/api/accounts/me"
PASSWORD = "correct-horse-battery"

pytestmark = pytest.mark.django_db


def _fields(body: dict) -> set[str]:
    return {error["field"] for error in body["errors"]}


def _register(client: APIClient, **overrides: object) -> HttpResponse:
    payload = {"username": "reader", "email": "reader@example.com", "password": PASSWORD, **overrides}
    return client.post(REGISTER, payload, format="json")


# --- the happy path ---------------------------------------------------------------------------


def test_accounts_register_then_token_then_me(anon_client: APIClient) -> None:
    registered = _register(anon_client, email="Reader@Example.COM")

    assert registered.status_code == 202, registered.content
    body = registered.json()
    assert body["username"] == "reader"
    assert body["email"] == "reader@example.com"
    assert "password" not in body
    user = User.objects.get(username="reader")
    assert (user.role, user.status) == ("customer", "active")

    token = anon_client.post(TOKEN, {"username": "reader", "password": PASSWORD}, format="json")
    assert token.status_code == 200, token.content
    key = token.json()["token"]

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    me = client.get(ME)
    assert me.status_code == 200
    mine = me.json()
    assert (mine["username"], mine["email"], mine["role"], mine["status"]) == (
        body["username"],
        body["email"],
        "customer",
        "active",
    )


def _signed_in(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_accounts_token_by_email(anon_client: APIClient, make_user: Callable[..., User]) -> None:
    user = make_user(email="someone@example.com")

    response = anon_client.post(TOKEN, {"username": " Someone@Example.com ", "password": PASSWORD}, format="json")

    assert response.status_code == 200, response.content
    assert _signed_in(response.json()["token"]).get(ME).json()["id"] == user.pk


def test_accounts_each_sign_in_issues_its_own_token(anon_client: APIClient, customer: User) -> None:
    payload = {"username": customer.username, "password": PASSWORD}

    first = anon_client.post(TOKEN, payload, format="json").json()["token"]
    second = anon_client.post(TOKEN, payload, format="json").json()["token"]

    assert first != second
    assert AuthToken.objects.filter(user=customer).count() == 2
    for token in (first, second):
        assert _signed_in(token).get(ME).json()["id"] == customer.pk


def test_accounts_register_cannot_choose_staff_role(anon_client: APIClient) -> None:
    response = _register(anon_client, role="staff", status="suspended", is_staff=True, is_superuser=True)

    assert response.status_code == 202
    user = User.objects.get(username="reader")
    assert (user.role, user.status, user.is_staff, user.is_superuser) == ("customer", "active", False, False)


def test_accounts_login_endpoints_ignore_a_stale_token_header(anon_client: APIClient, customer: User) -> None:
    anon_client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)

    assert _register(anon_client).status_code == 202
    token = anon_client.post(TOKEN, {"username": customer.username, "password": PASSWORD}, format="json")
    assert token.status_code == 200


# --- /me ----------------------------------------------------------------------------------------


def test_accounts_me_requires_authentication(anon_client: APIClient) -> None:
    response = anon_client.get(ME)

    assert assert_problem(response, 401)["type"].endswith("/not-authenticated")
    assert response["WWW-Authenticate"] == "Token"


def test_accounts_me_rejects_unknown_token(anon_client: APIClient) -> None:
    anon_client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)

    response = anon_client.get(ME)

    assert_problem(response, 401)
    assert response["WWW-Authenticate"] == "Token"


def test_accounts_me_for_customer(customer: User, customer_client: APIClient) -> None:
    response = customer_client.get(ME)

    assert response.status_code == 200
    assert response.json()["id"] == customer.pk
    assert response.json()["role"] == "customer"


def test_accounts_me_for_staff(staff: User, staff_client: APIClient) -> None:
    response = staff_client.get(ME)

    assert response.status_code == 200
    assert response.json()["role"] == "staff"


def test_accounts_me_for_suspended_customer(suspended: User, suspended_client: APIClient) -> None:
    response = suspended_client.get(ME)

    assert response.status_code == 200
    assert response.json()["id"] == suspended.pk
    assert response.json()["status"] == "suspended"


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_accounts_me_is_read_only(customer_client: APIClient, method: str) -> None:
    response = getattr(customer_client, method)(ME, {"role": "staff"}, format="json")

    assert_problem(response, 405)
    assert User.objects.get(pk=customer_client.get(ME).json()["id"]).role == "customer"


# --- registration errors ------------------------------------------------------------------------


def test_accounts_register_leaves_a_taken_username_alone_and_does_not_say_so(
    anon_client: APIClient, customer: User
) -> None:
    response = _register(anon_client, username=customer.username.upper(), email="new@example.com")

    assert response.status_code == 202, "the answer a new name gets: registration tells no one who has an account"
    assert User.objects.count() == 1
    assert not User.objects.filter(email="new@example.com").exists()


def test_accounts_register_leaves_a_taken_email_alone_and_does_not_say_so(
    anon_client: APIClient, customer: User
) -> None:
    response = _register(anon_client, username="newname", email=customer.email.upper())

    assert response.status_code == 202
    assert User.objects.count() == 1
    assert anon_client.post(TOKEN, {"username": "newname", "password": PASSWORD}, format="json").status_code == 401


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"email": "not-an-email"}, "email", id="bad-email"),
        pytest.param({"email": "a@"}, "email", id="half-email"),
        pytest.param({"email": ""}, "email", id="blank-email"),
        pytest.param({"email": None}, "email", id="null-email"),
        pytest.param({"email": ["a@example.com"]}, "email", id="list-email"),
        pytest.param({"email": "x" * 250 + "@example.com"}, "email", id="long-email"),
        pytest.param({"password": "short"}, "password", id="short-password"),
        pytest.param({"password": "x" * 129}, "password", id="long-password"),
        pytest.param({"password": None}, "password", id="null-password"),
        pytest.param({"password": 12345678}, "password", id="number-password"),
        pytest.param({"password": "password123"}, "password", id="common-password"),
        pytest.param({"password": "83920174655"}, "password", id="numeric-password"),
        pytest.param({"password": "readerreader", "username": "readerreader"}, "password", id="like-username"),
        pytest.param({"username": "ab"}, "username", id="short-username"),
        pytest.param({"username": "has space"}, "username", id="space-username"),
        pytest.param({"username": "nul\x00byte"}, "username", id="nul-username"),
        pytest.param({"username": "u" * 151}, "username", id="long-username"),
        pytest.param({"username": {"a": 1}}, "username", id="object-username"),
        pytest.param({"username": True}, "username", id="bool-username"),
    ],
)
def test_accounts_register_rejects_invalid_fields(anon_client: APIClient, overrides: dict, field: str) -> None:
    response = _register(anon_client, **overrides)

    body = assert_problem(response, 400)
    assert body["type"].endswith("/validation-error")
    assert _fields(body) == {field}
    assert not User.objects.exists()


def test_accounts_register_names_every_missing_field(anon_client: APIClient) -> None:
    response = anon_client.post(REGISTER, {}, format="json")

    assert _fields(assert_problem(response, 400)) == {"username", "email", "password"}
    assert all(error["code"] == "required" for error in response.json()["errors"])


# --- token errors -------------------------------------------------------------------------------


def test_accounts_token_rejects_wrong_password(anon_client: APIClient, customer: User) -> None:
    response = anon_client.post(TOKEN, {"username": customer.username, "password": "wrong-password"}, format="json")

    assert_problem(response, 401)
    assert "WWW-Authenticate" in response
    assert not AuthToken.objects.filter(user=customer).exists()


def test_accounts_token_rejects_unknown_user(anon_client: APIClient) -> None:
    for login in ("nobody", "nobody@example.com"):
        response = anon_client.post(TOKEN, {"username": login, "password": PASSWORD}, format="json")
        assert_problem(response, 401)


def test_accounts_token_refuses_suspended_account(anon_client: APIClient, suspended: User) -> None:
    response = anon_client.post(TOKEN, {"username": suspended.username, "password": PASSWORD}, format="json")

    assert assert_problem(response, 403)["type"].endswith("/account-suspended")
    assert not AuthToken.objects.filter(user=suspended).exists()


def test_accounts_token_for_inactive_user_is_refused(anon_client: APIClient, customer: User) -> None:
    User.objects.filter(pk=customer.pk).update(is_active=False)

    response = anon_client.post(TOKEN, {"username": customer.username, "password": PASSWORD}, format="json")

    assert_problem(response, 401)


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        pytest.param({}, {"username", "password"}, id="empty"),
        pytest.param({"username": "reader"}, {"password"}, id="no-password"),
        pytest.param({"username": None, "password": None}, {"username", "password"}, id="nulls"),
        pytest.param({"username": ["a"], "password": {"b": 1}}, {"username", "password"}, id="wrong-types"),
        pytest.param({"username": "", "password": ""}, {"username", "password"}, id="blanks"),
        pytest.param({"username": "u" * 255, "password": "p"}, {"username"}, id="long-username"),
        pytest.param({"username": "reader", "password": "p" * 129}, {"password"}, id="long-password"),
        pytest.param({"username": "re\x00der", "password": "p"}, {"username"}, id="nul-byte"),
    ],
)
def test_accounts_token_rejects_invalid_fields(anon_client: APIClient, payload: dict, fields: set[str]) -> None:
    response = anon_client.post(TOKEN, payload, format="json")

    assert _fields(assert_problem(response, 400)) == fields
    assert not AuthToken.objects.exists()


# --- bad bodies on both write endpoints ---------------------------------------------------------


WRITE_ENDPOINTS = [REGISTER, TOKEN]


@pytest.mark.parametrize("path", WRITE_ENDPOINTS)
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param('{"username": ', id="truncated"),
        pytest.param("{username: 1}", id="unquoted"),
        pytest.param('{"username": NaN}', id="nan"),
        pytest.param(b'{"username": "\xff"}', id="not-utf8"),
        pytest.param("{" * 50_000 + "}" * 50_000, id="deeply-nested-objects"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deeply-nested-arrays"),
    ],
)
def test_accounts_api_rejects_malformed_json(anon_client: APIClient, path: str, raw: str | bytes) -> None:
    response = anon_client.post(path, raw, content_type="application/json")

    assert assert_problem(response, 400)["type"].endswith("/malformed-request")
    assert not User.objects.exists()


@pytest.mark.parametrize("path", WRITE_ENDPOINTS)
@pytest.mark.parametrize("raw", ["[]", '[{"username": "reader"}]', "7", "null", '"reader"'])
def test_accounts_api_rejects_non_object_body(anon_client: APIClient, path: str, raw: str) -> None:
    response = anon_client.post(path, raw, content_type="application/json")

    assert assert_problem(response, 400)["errors"]
    assert not User.objects.exists()


@pytest.mark.parametrize("path", WRITE_ENDPOINTS)
def test_accounts_api_rejects_text_plain(anon_client: APIClient, path: str) -> None:
    raw = json.dumps({"username": "reader", "email": "reader@example.com", "password": PASSWORD})

    response = anon_client.post(path, raw, content_type="text/plain")

    assert assert_problem(response, 415)["type"].endswith("/unsupported-media-type")
    assert not User.objects.exists()


@pytest.mark.parametrize("path", WRITE_ENDPOINTS)
def test_accounts_api_rejects_oversize_body(anon_client: APIClient, path: str) -> None:
    payload = {"username": "reader", "email": "reader@example.com", "password": PASSWORD}
    raw = json.dumps({**payload, "padding": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE})

    response = anon_client.post(path, raw, content_type="application/json")

    assert assert_problem(response, 413)["type"].endswith("/payload-too-large")
    assert not User.objects.exists()


def test_accounts_register_accepts_form_encoding(anon_client: APIClient) -> None:
    response = anon_client.post(REGISTER, {"username": "reader", "email": "reader@example.com", "password": PASSWORD})

    assert response.status_code == 202, response.content
    assert User.objects.filter(username="reader").exists()


def test_accounts_token_client_works_for_registered_user(make_user: Callable[..., User]) -> None:
    user = make_user()

    assert client_for(user).get(ME).json()["username"] == user.username


def test_accounts_old_pbkdf2_password_still_logs_in_and_is_rehashed_with_argon2(
    anon_client: APIClient, customer: User, settings: object
) -> None:
    from django.contrib.auth.hashers import PBKDF2PasswordHasher, identify_hasher

    from bookstore import settings as production

    settings.PASSWORD_HASHERS = production.PASSWORD_HASHERS  # the tests' fast hasher is not the shop's
    hasher = PBKDF2PasswordHasher()
    User.objects.filter(pk=customer.pk).update(password=hasher.encode(PASSWORD, hasher.salt()))
    phone = client_for(customer)  # signed in before the upgrade

    wrong = anon_client.post(TOKEN, {"username": customer.username, "password": "not-it"}, format="json")
    right = anon_client.post(TOKEN, {"username": customer.username, "password": PASSWORD}, format="json")

    assert_problem(wrong, 401)
    assert right.status_code == 200, right.content
    customer.refresh_from_db()
    assert identify_hasher(customer.password).algorithm == "argon2"
    again = anon_client.post(TOKEN, {"username": customer.username, "password": PASSWORD}, format="json")
    assert again.status_code == 200, again.content
    # A hash upgrade is not a password change: the token issued before it still works.
    assert phone.get(ME).status_code == 200
