"""Who the limiter thinks is asking, from a knox token: verified, never past expiry, forgotten on revocation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.crypto import hash_token
from knox.models import AuthToken

from accounts.models import User
from accounts.services import token_create, token_revoke, token_revoke_all
from resilience.http import principal as principal_module
from resilience.http.principal import ANONYMOUS, PRINCIPAL_TTL, Principal, principal

pytestmark = pytest.mark.django_db


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    monkeypatch.setattr(principal_module, "clock", fake)
    principal_module.clear()
    yield fake
    principal_module.clear()


def _as(token: str) -> Principal:
    return principal(RequestFactory().get("/api/books", HTTP_AUTHORIZATION=f"Token {token}"))


def test_knox_token_resolves_to_its_user_and_staff_flag(
    clock: FakeClock, customer: User, staff: User, make_user: Callable[..., User]
) -> None:
    root = make_user()
    User.objects.filter(pk=root.pk).update(is_superuser=True)

    assert _as(token_create(user=customer).token) == Principal(customer.pk, False)
    assert _as(token_create(user=staff).token) == Principal(staff.pk, True)
    assert _as(token_create(user=root).token) == Principal(root.pk, True)


def test_token_with_a_known_prefix_but_a_wrong_rest_is_anonymous(clock: FakeClock, customer: User) -> None:
    token = token_create(user=customer).token
    forged = token[:15] + ("0" if token[15] != "0" else "1") + token[16:]

    assert _as(forged) == ANONYMOUS
    assert _as(token) == Principal(customer.pk, False)


def test_token_carried_over_from_drf_resolves(clock: FakeClock, customer: User) -> None:
    key = "89abcdef0123456789abcdef0123456789abcdef"  # DRF's 40 characters, as migration 0002 stores them
    AuthToken.objects.bulk_create(
        [
            AuthToken(
                digest=hash_token(key), token_key=key[:15], user=customer, expiry=timezone.now() + timedelta(hours=1)
            )
        ]
    )

    assert _as(key) == Principal(customer.pk, False)


def test_expired_token_is_anonymous(clock: FakeClock, customer: User) -> None:
    token = token_create(user=customer).token
    AuthToken.objects.filter(user=customer).update(expiry=timezone.now() - timedelta(seconds=1))

    assert _as(token) == ANONYMOUS


def test_cached_principal_is_not_trusted_past_the_tokens_expiry(clock: FakeClock, customer: User) -> None:
    token = token_create(user=customer).token
    AuthToken.objects.filter(user=customer).update(expiry=timezone.now() + timedelta(seconds=5))
    assert _as(token) == Principal(customer.pk, False)

    # Six seconds later (for the database too), the token has expired: the cache must not outlive it.
    AuthToken.objects.filter(user=customer).update(expiry=timezone.now() - timedelta(seconds=1))
    clock.now += 6

    assert _as(token) == ANONYMOUS


def test_cached_principal_saves_the_query_within_the_ttl(clock: FakeClock, customer: User) -> None:
    token = token_create(user=customer).token
    _as(token)

    clock.now += PRINCIPAL_TTL - 1
    with CaptureQueriesContext(connection) as queries:
        assert _as(token) == Principal(customer.pk, False)
    assert len(queries) == 0


@pytest.mark.parametrize("revoke", ["one", "all", "password", "suspension"])
def test_token_revoked_in_this_process_is_forgotten_at_once(clock: FakeClock, customer: User, revoke: str) -> None:
    token = token_create(user=customer).token
    assert _as(token) == Principal(customer.pk, False)

    if revoke == "one":
        token_revoke(token=AuthToken.objects.get(user=customer))
    elif revoke == "all":
        token_revoke_all(user=customer)
    elif revoke == "password":
        customer.set_password("another-horse-battery")
        customer.save()
    else:
        customer.status = User.Status.SUSPENDED
        customer.save()

    assert _as(token) == ANONYMOUS  # no clock advance: not a TTL running out


def test_token_revoked_elsewhere_is_forgotten_within_the_ttl(clock: FakeClock, customer: User) -> None:
    token = token_create(user=customer).token
    assert _as(token) == Principal(customer.pk, False)

    # Another process revoked it: this one is not told, so it trusts its cache until the TTL ends.
    AuthToken.objects.filter(user=customer)._raw_delete(connection.alias)
    clock.now += PRINCIPAL_TTL

    assert _as(token) == ANONYMOUS


@pytest.mark.parametrize("credential", ["0" * 39, "g" * 64, "A" * 64, "x", "0" * 64 + "0"])
def test_malformed_token_is_anonymous_without_a_query(clock: FakeClock, credential: str) -> None:
    with CaptureQueriesContext(connection) as queries:
        assert _as(credential) == ANONYMOUS
    assert len(queries) == 0
