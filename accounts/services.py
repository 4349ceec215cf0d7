"""Writes on accounts."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone
from knox.models import AuthToken

from accounts.models import SHOP_STAFF_GROUP, User
from bookstore.exceptions import ApplicationError


class AccountExists(ApplicationError):
    status_code = 409
    slug = "account-exists"
    title = "Account already exists"


class IssuedToken(NamedTuple):
    token: str  # shown once: only its digest is stored
    expiry: datetime


@transaction.atomic
def user_create(*, username: str, email: str, password: str, role: str = User.Role.CUSTOMER) -> User:
    """Create a user with a hashed password; raise AccountExists on a taken name or email."""
    email = email.strip().lower()
    if User.objects.filter(username__iexact=username).exists() or User.objects.filter(email=email).exists():
        raise AccountExists("That username or email is already registered.")
    try:
        with transaction.atomic():
            return User.objects.create_user(username=username, email=email, password=password, role=role)
    except IntegrityError as e:  # a concurrent registration won the race
        raise AccountExists("That username or email is already registered.") from e


def user_register(*, username: str, email: str, password: str) -> User | None:
    """Create a customer account, or return None when the username or email is taken, at the same cost.

    A taken name costs the same password hash a new account does, so the time of the answer does
    not tell which names have accounts either.
    """
    try:
        return user_create(username=username, email=email, password=password)
    except AccountExists:
        make_password(password)
        return None


@transaction.atomic
def token_create(*, user: User) -> IssuedToken:
    """Issue a fresh API token, revoking the user's expired ones and the oldest beyond the per-user cap."""
    # The user's row lock makes concurrent sign-ins of one account take turns, so the cap holds.
    list(User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))
    AuthToken.objects.filter(user=user, expiry__lte=timezone.now()).delete()
    keep = settings.TOKEN_LIMIT_PER_USER - 1  # room for the new one
    oldest = AuthToken.objects.filter(user=user).order_by("-created", "-digest").values_list("digest", flat=True)
    surplus = list(oldest[keep:])
    if surplus:
        AuthToken.objects.filter(digest__in=surplus).delete()
    instance, token = AuthToken.objects.create(user=user)
    return IssuedToken(token=token, expiry=instance.expiry)


def token_revoke(*, token: AuthToken) -> None:
    """Revoke one API token (signing out of one device)."""
    token.delete()


def token_revoke_all(*, user: User) -> int:
    """Revoke every API token of the user and return how many there were."""
    deleted, _ = AuthToken.objects.filter(user=user).delete()
    return deleted


def user_role_sync(*, user: User) -> None:
    """Put the user in the shop staff group if their role is staff, and take them out otherwise."""
    group, _ = Group.objects.get_or_create(name=SHOP_STAFF_GROUP)
    if user.role == User.Role.STAFF:
        user.groups.add(group)
    else:
        user.groups.remove(group)


def user_changes_apply(
    *, user: User, created: bool, role_before: str | None, status_before: str | None, password_changed: bool
) -> None:
    """Carry out what a saved change to a user means for their group and their tokens."""
    if (created and user.role == User.Role.STAFF) or (role_before is not None and role_before != user.role):
        user_role_sync(user=user)
    suspended_now = status_before is not None and status_before != user.status and user.is_suspended
    if password_changed or suspended_now:
        # Whoever held a token may hold the old password: every device signs in again.
        token_revoke_all(user=user)
