"""Customers and staff."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models, transaction
from django.db.models.functions import Lower

from accounts.usernames import skeleton

# The group whose permissions a staff role grants (migration 0003 lists them; README "Roles").
SHOP_STAFF_GROUP = "Shop staff"


class User(AbstractUser):
    """A customer or a staff member; a suspended account loses its API tokens and cannot order."""

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

    # TR39 skeleton of the username (accounts/usernames.py): a new name may not share one with an
    # existing user. Not unique: names from before the rule stay as they are, look-alikes included.
    username_skeleton = models.TextField(editable=False, default="")

    objects: ClassVar[UserManager[Self]] = UserManager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(role__in=["customer", "staff"]), name="user_role_valid"),
            models.CheckConstraint(condition=models.Q(status__in=["active", "suspended"]), name="user_status_valid"),
            models.UniqueConstraint(Lower("email"), name="user_email_ci_unique"),
        ]
        indexes = [models.Index(fields=["username_skeleton"], name="user_username_skeleton")]

    @property
    def is_suspended(self) -> bool:
        """Return True if the account is suspended."""
        return self.status == self.Status.SUSPENDED

    @property
    def is_shop_staff(self) -> bool:
        """Return True if the user may manage the catalogue."""
        return self.role == self.Role.STAFF or self.is_superuser

    _password_cleared = False

    def set_unusable_password(self) -> None:
        """Remove the password; the next save revokes the user's tokens, as a new password does."""
        super().set_unusable_password()
        self._password_cleared = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, keeping the admin flag and staff group in step with the role and revoking tokens as needed."""
        from accounts import services  # services import this module

        update_fields = kwargs.get("update_fields")
        fields = None if update_fields is None else set(update_fields)
        created = self._state.adding
        # set_password() keeps the new raw password in _password until the save; Django clears it for
        # the hash upgrades it makes at sign-in, so this is a password someone chose, not a rehash.
        password_changed = not created and (self._password is not None or self._password_cleared)  # type: ignore[attr-defined]  # set_password()'s, not in the stubs
        self._password_cleared = False
        before = None
        if not created and (fields is None or fields & {"role", "status"}):
            before = type(self)._default_manager.filter(pk=self.pk).values("role", "status").first()
        # The role is the one fact: staff get the admin flag, customers lose it (superusers keep theirs).
        if self.role == self.Role.STAFF:
            self.is_staff = True
        elif not self.is_superuser:
            self.is_staff = False
        if fields is None or "username" in fields:
            self.username_skeleton = skeleton(self.username)
        if fields is not None and fields & {"role", "is_superuser", "username"}:
            kwargs["update_fields"] = fields | {"is_staff", "username_skeleton"}
        self.email = (self.email or "").strip().lower()
        with transaction.atomic():
            super().save(*args, **kwargs)
            services.user_changes_apply(
                user=self,
                created=created,
                role_before=before["role"] if before else None,
                status_before=before["status"] if before else None,
                password_changed=password_changed,
            )
