"""API tokens: hashed, expiring, revocable, capped per user, and what became of DRF's plain ones."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken
from pytest_django.fixtures import Settings
from rest_framework.test import APIClient

from accounts import token_cache
from accounts.models import User
from accounts.services import token_create

TOKEN = "/api/accounts/token"
ME = "/api/accounts/me"
LOGOUT = "/api/accounts/logout"
LOGOUT_ALL = "/api/accounts/logout-all"
PASSWORD = "correct-horse-battery"
PROBLEM = "application/problem+json"


def _signed_in(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def _sign_in(user: User) -> str:
    response = APIClient().post(TOKEN, {"username": user.username, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["token"]


def _works(token: str) -> bool:
    """Return True if the token signs in (a revoked or expired one answers a problem+json 401)."""
    response = _signed_in(token).get(ME)
    if response.status_code == 401:
        assert response["Content-Type"] == PROBLEM
        return False
    assert response.status_code == 200, response.content
    return True


def _superuser_client(make_user: Callable[..., User]) -> Client:
    root = make_user(username="root")
    User.objects.filter(pk=root.pk).update(is_superuser=True, is_staff=True)
    client = Client()
    client.force_login(root)
    return client


# --- what the token endpoint answers ------------------------------------------------------------


def test_token_response_has_the_token_and_its_expiry(db: None, customer: User) -> None:
    before = timezone.now()
    response = APIClient().post(TOKEN, {"username": customer.username, "password": PASSWORD}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"token", "expiry"}
    expiry = datetime.fromisoformat(body["expiry"])
    lifetime = timedelta(hours=settings.TOKEN_TTL_HOURS)
    assert before + lifetime <= expiry <= timezone.now() + lifetime
    assert expiry.utcoffset() == timedelta(0)
    assert _works(body["token"])


def test_token_is_stored_only_as_a_digest(db: None, customer: User) -> None:
    token = _sign_in(customer)

    row = AuthToken.objects.get(user=customer)
    assert row.digest != token
    assert token not in row.digest
    assert row.token_key == token[:15]  # the lookup prefix alone cannot sign in
    assert not _works(row.token_key + "0" * (len(token) - 15))


def test_token_lifetime_comes_from_the_environment() -> None:
    env = {**os.environ, "DEBUG": "true", "TOKEN_TTL_HOURS": "2.5", "TOKEN_LIMIT_PER_USER": "4"}
    code = (
        "from bookstore import settings as s; print(s.REST_KNOX['TOKEN_TTL'].total_seconds(), s.TOKEN_LIMIT_PER_USER)"
    )

    run = {"cwd": settings.BASE_DIR, "capture_output": True, "text": True}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, **run)  # type: ignore[call-overload]  # typeshed cannot match **run
    bad = subprocess.run([sys.executable, "-c", code], env={**env, "TOKEN_TTL_HOURS": "0"}, **run)  # type: ignore[call-overload]  # typeshed cannot match **run

    assert out.stdout.split() == ["9000.0", "4"]
    assert bad.returncode != 0
    assert "TOKEN_TTL_HOURS" in bad.stderr


def test_token_authentication_costs_one_query(db: None, customer: User) -> None:
    client = _signed_in(_sign_in(customer))
    APIClient().get(ME)  # warm: the resilience runtime loads its policies once

    with CaptureQueriesContext(connection) as queries:
        assert client.get(ME).status_code == 200

    assert len(queries) == 1, [query["sql"] for query in queries]


# --- expiry --------------------------------------------------------------------------------------


def test_expired_token_is_refused_and_removed(db: None, customer: User) -> None:
    token = _sign_in(customer)
    AuthToken.objects.filter(user=customer).update(expiry=timezone.now() - timedelta(seconds=1))

    assert not _works(token)
    assert not AuthToken.objects.filter(user=customer).exists()


def test_using_a_token_does_not_extend_it(db: None, customer: User) -> None:
    token = _sign_in(customer)
    expiry = AuthToken.objects.get(user=customer).expiry

    for _ in range(3):
        assert _works(token)

    assert AuthToken.objects.get(user=customer).expiry == expiry


def test_sign_in_sweeps_the_users_expired_tokens(db: None, customer: User) -> None:
    stale = [token_create(user=customer).token for _ in range(2)]
    AuthToken.objects.filter(user=customer).update(expiry=timezone.now() - timedelta(minutes=1))

    fresh = _sign_in(customer)

    assert AuthToken.objects.filter(user=customer).count() == 1
    assert _works(fresh)
    assert not any(_works(token) for token in stale)


# --- the cap on tokens per user ------------------------------------------------------------------


def test_sign_in_past_the_cap_revokes_the_oldest_token(db: None, customer: User, settings: Settings) -> None:
    settings.TOKEN_LIMIT_PER_USER = 3
    tokens = [_sign_in(customer) for _ in range(5)]

    assert [_works(token) for token in tokens] == [False, False, True, True, True]
    assert AuthToken.objects.filter(user=customer).count() == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_sign_ins_keep_to_the_cap(make_user: Callable[..., User], settings: Settings) -> None:
    settings.TOKEN_LIMIT_PER_USER = 2
    user = make_user()
    other = make_user()
    token_create(user=other)
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def sign_in() -> None:
        try:
            start.wait()
            token_create(user=user)
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sign_in) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert AuthToken.objects.filter(user=user).count() == 2
    assert AuthToken.objects.filter(user=other).count() == 1


# --- logout --------------------------------------------------------------------------------------


def test_logout_revokes_only_the_token_it_carries(db: None, customer: User) -> None:
    laptop, phone = _sign_in(customer), _sign_in(customer)

    response = _signed_in(laptop).post(LOGOUT)

    assert response.status_code == 204
    assert not _works(laptop)
    assert _works(phone)
    assert _signed_in(laptop).post(LOGOUT).status_code == 401


def test_logout_all_revokes_every_token_of_that_user_only(db: None, make_user: Callable[..., User]) -> None:
    alice, bob = make_user(), make_user()
    alice_tokens = [_sign_in(alice) for _ in range(3)]
    bob_token = _sign_in(bob)

    response = _signed_in(alice_tokens[0]).post(LOGOUT_ALL)

    assert response.status_code == 204
    assert not any(_works(token) for token in alice_tokens)
    assert _works(bob_token)


@pytest.mark.parametrize("path", [LOGOUT, LOGOUT_ALL])
def test_logout_needs_a_token(db: None, customer: User, path: str) -> None:
    session = APIClient()
    session.force_login(customer)

    for client in (APIClient(), session):
        response = client.post(path)
        assert response.status_code == 401
        assert response["Content-Type"] == PROBLEM
        assert response["WWW-Authenticate"] == "Token"


# --- revoked by a new password or a suspension ---------------------------------------------------


def test_set_password_and_save_revokes_every_token(db: None, customer: User) -> None:
    tokens = [_sign_in(customer) for _ in range(2)]

    customer.set_password("another-horse-battery")
    customer.save()

    assert not any(_works(token) for token in tokens)


def test_saving_without_a_new_password_keeps_tokens(db: None, customer: User) -> None:
    token = _sign_in(customer)

    customer.first_name = "Ada"
    customer.save()
    customer.save(update_fields=["last_login"])

    assert _works(token)


@pytest.mark.parametrize(
    "form",
    [
        pytest.param({"password1": "another-horse-battery", "password2": "another-horse-battery"}, id="new-password"),
        pytest.param({"usable_password": "false", "unset-password": "1"}, id="password-disabled"),
    ],
)
def test_admin_password_form_revokes_every_token(
    make_user: Callable[..., User], customer: User, form: dict[str, str]
) -> None:
    admin = _superuser_client(make_user)
    token = _sign_in(customer)

    response = admin.post(f"/admin/accounts/user/{customer.pk}/password/", {"usable_password": "true", **form})

    assert response.status_code == 302, response.content
    assert response["Location"] == f"/admin/accounts/user/{customer.pk}/change/"  # saved, not refused
    assert not _works(token)


def test_changepassword_command_revokes_every_token(db: None, customer: User, monkeypatch: pytest.MonkeyPatch) -> None:
    token = _sign_in(customer)
    monkeypatch.setattr(
        "django.contrib.auth.management.commands.changepassword.getpass.getpass",
        lambda prompt="": "another-horse-battery",
    )

    call_command("changepassword", customer.username, stdout=open(os.devnull, "w"))  # noqa: SIM115

    assert not _works(token)


def test_suspension_revokes_every_token(db: None, customer: User) -> None:
    token = _sign_in(customer)

    customer.status = User.Status.SUSPENDED
    customer.save()

    assert not _works(token)
    assert not AuthToken.objects.filter(user=customer).exists()


# --- malformed credentials -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param("\xff" * 64, id="not-utf8"),
        pytest.param("a" * 5 + "\x00" + "a" * 58, id="nul-byte"),  # inside the lookup prefix
        pytest.param("A" * 64, id="upper-case"),
        pytest.param("0" * 63, id="short"),
    ],
)
def test_malformed_token_is_a_401_not_a_500(db: None, credential: str) -> None:
    response = APIClient().get(ME, HTTP_AUTHORIZATION=f"Token {credential}")

    assert response.status_code == 401
    assert response["Content-Type"] == PROBLEM


# --- tokens from before the upgrade (DRF's plain-text table) --------------------------------------


def test_drf_token_keeps_working_until_one_lifetime_after_the_migration(db: None, customer: User) -> None:
    import importlib

    from django.apps import apps

    migration = importlib.import_module("accounts.migrations.0002_knox_tokens")
    key = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created timestamp with time zone NOT NULL,"
            " user_id bigint NOT NULL UNIQUE REFERENCES accounts_user (id))"
        )
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, %s, %s)", [key, timezone.now(), customer.pk])
        cursor.execute("INSERT INTO django_migrations (app, name, applied) VALUES ('authtoken', '0001_initial', now())")
    lifetime = timedelta(hours=settings.TOKEN_TTL_HOURS)
    migrated_at = timezone.now()

    with connection.schema_editor() as editor:
        migration.carry_over(apps, editor)

    row = AuthToken.objects.get(user=customer)
    assert row.digest != key
    assert row.token_key == key[:15]
    assert migrated_at + lifetime <= row.expiry <= timezone.now() + lifetime
    assert "authtoken_token" not in connection.introspection.table_names()  # no plain key is left
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations WHERE app = 'authtoken'")
        assert cursor.fetchone() == (0,)
    assert _signed_in(key).get(ME).json()["id"] == customer.pk
    # ... and it ends like any other token.
    AuthToken.objects.filter(user=customer).update(expiry=timezone.now() - timedelta(seconds=1))
    token_cache.clear()  # the update stands in for hours passing: memory of the token lapses far sooner
    assert not _works(key)


def test_drf_token_migration_is_a_no_op_on_a_new_database(db: None) -> None:
    import importlib

    from django.apps import apps

    migration = importlib.import_module("accounts.migrations.0002_knox_tokens")

    with connection.schema_editor() as editor:
        migration.carry_over(apps, editor)

    assert not AuthToken.objects.exists()
