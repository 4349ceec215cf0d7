"""Customers and staff."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models
from django.db.models.functions import Lower


class User(AbstractUser):
    """A customer or a staff member; suspended users may sign in but not order."""

    class Role(models.TextChoices):
        CUSTOMER = "customer", "Customer"
        STAFF = "staff", "Staff"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    email = models.EmailField("email address", unique=True)
    role = models.CharField(
        max_length=16,
        choices=Role.choices,
        default=Role.CUSTOMER,
        help_text="customer (default) buys books; staff edit the catalogue and resilience policies.",
    )
    status = models.CharField(
        max_length=16,
        choices=Status.choices,
        default=Status.ACTIVE,
        help_text="active (default) or suspended: a suspended account cannot place orders.",
    )

    objects = UserManager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(role__in=["customer", "staff"]), name="user_role_valid"),
            models.CheckConstraint(condition=models.Q(status__in=["active", "suspended"]), name="user_status_valid"),
            models.UniqueConstraint(Lower("email"), name="user_email_ci_unique"),
        ]

    @property
    def is_suspended(self) -> bool:
        """Return True if the account is suspended."""
        return self.status == self.Status.SUSPENDED

    @property
    def is_shop_staff(self) -> bool:
        """Return True if the user may manage the catalogue."""
        return self.role == self.Role.STAFF or self.is_superuser

    def save(self, *args: object, **kwargs: object) -> None:
        # Staff role and Django's admin flag are one fact; keep them from drifting apart.
        if self.role == self.Role.STAFF:
            self.is_staff = True
        self.email = (self.email or "").strip().lower()
        super().save(*args, **kwargs)
