"""Reads on orders."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import User
from orders.models import Order


def order_list(*, user: User) -> QuerySet[Order]:
    """Return the orders a user may see: their own, or all of them for staff."""
    qs = Order.objects.select_related("user").prefetch_related("lines")
    return qs if user.is_shop_staff else qs.filter(user=user)
