"""Writes on accounts."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from rest_framework.authtoken.models import Token

from accounts.models import User
from bookstore.exceptions import ApplicationError


class AccountExists(ApplicationError):
    status_code = 409
    slug = "account-exists"
    title = "Account already exists"


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


def token_for(*, user: User) -> str:
    """Return the user's API token, creating it on first use."""
    token, _ = Token.objects.get_or_create(user=user)
    return token.key
