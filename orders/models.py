"""Orders and their lines."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from catalog.models import Book


class Order(models.Model):
    class Status(models.TextChoices):
        PLACED = "placed", "Placed"
        CANCELLED = "cancelled", "Cancelled"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PLACED)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # A client's Idempotency-Key and a digest of the body it came with (replays must match).
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, editable=False)
    request_digest = models.CharField(max_length=64, blank=True, default="", editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(total__gte=0), name="order_total_non_negative"),
            models.CheckConstraint(condition=models.Q(status__in=["placed", "cancelled"]), name="order_status_valid"),
            models.UniqueConstraint(
                fields=["user", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="order_idempotency_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"Order #{self.pk} ({self.status})"


def _largest(field: models.DecimalField) -> Decimal:
    """Return the largest value a DecimalField's column holds: 9999999999.99 for numeric(12,2)."""
    assert field.max_digits is not None
    assert field.decimal_places is not None
    return Decimal(10) ** (field.max_digits - field.decimal_places) - Decimal(10) ** -field.decimal_places


# The most one order may total: exactly what Order.total (numeric(12,2)) holds, so a checked total is
# always stored. The largest request (100 lines x 1000 copies of a 99,999,999.99 book) comes to
# 9,999,999,999,000.00 and would need numeric(15,2); the column stays: an order near ten billion is a
# slip or an attack, better refused up front (422 naming the line) than stored and charged.
MAX_ORDER_TOTAL = _largest(Order._meta.get_field("total"))


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    book = models.ForeignKey(Book, on_delete=models.PROTECT, related_name="order_lines")
    quantity = models.PositiveIntegerField()
    # The price when ordered; later catalogue changes never rewrite history.
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gt=0), name="orderline_quantity_positive"),
            models.CheckConstraint(condition=models.Q(unit_price__gte=0), name="orderline_price_non_negative"),
            models.UniqueConstraint(fields=["order", "book"], name="orderline_one_per_book"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x book {self.book_id}"
