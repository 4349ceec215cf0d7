"""Errors of the accounts app."""

from __future__ import annotations

from bookstore.exceptions import ApplicationError


class AccountSuspended(ApplicationError):
    status_code = 403
    slug = "account-suspended"
    title = "Account suspended"
