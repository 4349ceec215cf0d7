"""Who may do what, reused by every app's API."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.exceptions import AccountSuspended


class IsShopStaff(BasePermission):
    """Allow staff only."""

    message = "Only staff may do this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_shop_staff)


class IsStaffOrReadOnly(IsShopStaff):
    """Allow anyone to read; only staff to write."""

    anonymous_reads = True  # the OpenAPI schema says so (bookstore/openapi.py)

    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.method in SAFE_METHODS or super().has_permission(request, view)


class IsActiveAccount(BasePermission):
    """Refuse suspended accounts with a 403 that says so."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if user.is_suspended:
            raise AccountSuspended("This account is suspended and cannot place or change orders.")
        return True
