"""Usernames: no "@", NFKC, one script, and no look-alike of an existing user's name (Unicode TR39)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
from django.apps import apps
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from accounts.usernames import mixed_scripts, skeleton

REGISTER = "/api/accounts/register"
TOKEN = "/api/accounts/token"
PASSWORD = "correct-horse-battery"
PROBLEM = "application/problem+json"

pytestmark = pytest.mark.django_db


def _register(username: str, email: str = "new@example.com") -> HttpResponse:
    return APIClient().post(REGISTER, {"username": username, "email": email, "password": PASSWORD}, format="json")


def _refused(response: HttpResponse, code: str) -> None:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == PROBLEM
    errors = response.json()["errors"]
    assert [(error["field"], error["code"]) for error in errors] == [("username", code)]


@pytest.fixture
def root() -> Client:
    user = User.objects.create_superuser(username="root", email="root@example.com", password=PASSWORD)
    client = Client()
    client.force_login(user)
    return client


# --- the rules, on registration --------------------------------------------------------------------


@pytest.mark.parametrize("username", ["reader@home", "a@b", "reader＠home"])
def test_register_refuses_an_at_sign(username: str) -> None:
    _refused(_register(username), "at_sign")
    assert not User.objects.exists()


def test_register_stores_the_nfkc_form(db: None) -> None:
    response = _register("Ｒｅａｄｅｒ")

    assert response.status_code == 202, response.content
    assert response.json()["username"] == "Reader"
    assert User.objects.get().username == "Reader"


def test_register_sees_the_nfkc_form_of_a_taken_name(make_user: Callable[..., User]) -> None:
    make_user(username="reader")

    response = _register("ＲＥＡＤＥＲ", email="other@example.com")

    assert response.status_code == 202, response.content
    assert User.objects.count() == 1, "taken: nothing is created (and the answer does not say so)"
    assert not User.objects.filter(email="other@example.com").exists()


def test_register_refuses_a_name_that_normalises_past_the_length_limit(db: None) -> None:
    # Each "ǆ" is one character typed and two ("dž") once normalised: 76 become 152.
    _refused(_register("ǆ" * 76), "max_length")
    assert not User.objects.exists()


@pytest.mark.parametrize(
    "username",
    [
        pytest.param("аdmin", id="cyrillic-a-in-latin"),
        pytest.param("pаypal", id="cyrillic-a-inside"),
        pytest.param("adminΑ", id="greek-alpha"),
        pytest.param("user٣", id="arabic-indic-digit"),
        pytest.param("한국ひらがな", id="hangul-and-kana"),
    ],
)
def test_register_refuses_mixed_scripts(db: None, username: str) -> None:
    _refused(_register(username), "mixed_script")
    assert not User.objects.exists()


@pytest.mark.parametrize(
    ("existing", "lookalike"),
    [
        pytest.param("paypal", "paypa1", id="digit-one-for-l"),
        pytest.param("modern", "rnodern", id="rn-for-m"),
        pytest.param("epox", "ерох", id="all-cyrillic"),
        pytest.param("Alice", "AIice", id="capital-i-for-l"),
    ],
)
def test_register_refuses_a_lookalike_of_an_existing_name(
    make_user: Callable[..., User], existing: str, lookalike: str
) -> None:
    make_user(username=existing)

    _refused(_register(lookalike), "confusable")
    assert User.objects.count() == 1


@pytest.mark.parametrize(
    "username",
    ["user_1.a+b-c", "иван", "ελένη", "tanaka山田", "たなか太郎", "김민준", "José", "Zoë"],
)
def test_register_accepts_single_script_names(db: None, username: str) -> None:
    response = _register(username)

    assert response.status_code == 202, response.content
    assert User.objects.filter(username=username).exists()


def test_sign_in_accepts_the_nfkc_form_of_a_name(make_user: Callable[..., User]) -> None:
    make_user(username="reader")

    response = APIClient().post(TOKEN, {"username": "ｒｅａｄｅｒ", "password": PASSWORD}, format="json")

    assert response.status_code == 200, response.content


# --- existing names ------------------------------------------------------------------------------


def test_existing_names_are_kept_and_still_sign_in(make_user: Callable[..., User]) -> None:
    legacy = make_user()
    User.objects.filter(pk=legacy.pk).update(username="old@name", username_skeleton="")
    migration = importlib.import_module("accounts.migrations.0004_username_skeleton")

    with connection.schema_editor() as editor:
        migration.fill(apps, editor)

    legacy.refresh_from_db()
    assert legacy.username == "old@name"
    assert legacy.username_skeleton == skeleton("old@name")
    response = APIClient().post(TOKEN, {"username": "old@name", "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content


def test_saving_a_user_keeps_the_skeleton_current(make_user: Callable[..., User]) -> None:
    user = make_user(username="reader")
    user.username = "rnodern"
    user.save(update_fields=["username"])

    assert User.objects.get(pk=user.pk).username_skeleton == skeleton("modern")


# --- the admin's forms ----------------------------------------------------------------------------


def _add_user(root: Client, username: str) -> HttpResponse:
    return root.post(
        "/admin/accounts/user/add/",
        {
            "username": username,
            "usable_password": "true",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "email": "added@example.com",
            "role": "customer",
            "status": "active",
        },
    )


@pytest.mark.parametrize(
    ("username", "code"),
    [("added@home", "at_sign"), ("аdded", "mixed_script"), ("rnodern", "confusable")],
)
def test_admin_add_form_applies_the_rules(
    root: Client, make_user: Callable[..., User], username: str, code: str
) -> None:
    make_user(username="modern")

    response = _add_user(root, username)

    assert response.status_code == 200
    assert [error.code for error in response.context["adminform"].form.errors.as_data()["username"]] == [code]
    assert not User.objects.filter(email="added@example.com").exists()


def test_admin_add_form_stores_a_good_name(root: Client) -> None:
    response = _add_user(root, "Ａdded")

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert User.objects.filter(username="Added").exists()


def _change_user(root: Client, user: User, username: str) -> HttpResponse:
    return root.post(
        f"/admin/accounts/user/{user.pk}/change/",
        {
            "username": username,
            "email": user.email,
            "is_active": "on",
            "role": user.role,
            "status": user.status,
            "date_joined_0": user.date_joined.date().isoformat(),
            "date_joined_1": user.date_joined.time().strftime("%H:%M:%S"),
        },
    )


def test_admin_change_form_refuses_renaming_to_a_lookalike(root: Client, make_user: Callable[..., User]) -> None:
    make_user(username="paypal")
    user = make_user(username="someone")

    response = _change_user(root, user, "paypa1")

    assert response.status_code == 200
    assert [error.code for error in response.context["adminform"].form.errors.as_data()["username"]] == ["confusable"]
    user.refresh_from_db()
    assert user.username == "someone"


def test_admin_change_form_keeps_an_old_name_that_breaks_the_rules(
    root: Client, make_user: Callable[..., User]
) -> None:
    user = make_user()
    User.objects.filter(pk=user.pk).update(username="old@name")
    user.refresh_from_db()

    response = _change_user(root, user, "old@name")

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert User.objects.get(pk=user.pk).username == "old@name"


# --- the TR39 pieces ------------------------------------------------------------------------------


def test_skeleton_maps_lookalikes_together_and_keeps_different_names_apart() -> None:
    assert skeleton("paypa1") == skeleton("paypal")
    assert skeleton("ерох") == skeleton("epox")
    assert skeleton("reader") != skeleton("leader")


def test_mixed_scripts_names_the_scripts() -> None:
    assert mixed_scripts("аdmin") == ["Cyrillic", "Latin"]
    assert mixed_scripts("admin_2024.x") == []
