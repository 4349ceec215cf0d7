"""Audit lines for the resilience layer: who changed which policy how, and sampled rate-limit refusals.

Every save or delete of a policy row, from the admin, a service or a shell, logs one
event="policy_change" line with the fields that changed as [before, after] and the user of the
request in progress (None outside a request). The admin's LogEntry says that a row changed;
these lines say what changed, in the same stream as everything else the app logs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from bookstore.request_id import get_request
from resilience.models import CircuitBreakerPolicy, RateLimitOverride, RateLimitPolicy

log = logging.getLogger("resilience.ops.audit")

AUDITED = (RateLimitPolicy, RateLimitOverride, CircuitBreakerPolicy)
# Bookkeeping columns that change on every save and say nothing about the policy itself.
_SKIPPED = frozenset({"id", "created_at", "updated_at"})


def _value(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def _fields(instance: models.Model) -> dict[str, Any]:
    """Return the audited column values of a row, by field name (foreign keys by id)."""
    return {
        field.name: _value(getattr(instance, field.attname))
        for field in instance._meta.concrete_fields
        if field.name not in _SKIPPED
    }


def _policy_name(instance: models.Model) -> str:
    if isinstance(instance, RateLimitOverride):
        # By id: the policy row may be going away in the same cascade.
        name = RateLimitPolicy.objects.filter(pk=instance.policy_id).values_list("name", flat=True).first()
        return f"{name or instance.policy_id}:{instance.key_value}"
    return str(instance.name)  # type: ignore[attr-defined]  # every other audited model has a name


def _current_user() -> str | None:
    """Return the username of the request in progress, or None (shell, migration, command)."""
    request = get_request()
    user = getattr(request, "user", None) if request is not None else None
    if user is None or not user.is_authenticated:
        return None
    name: str = user.get_username()
    return name


def _log_change(instance: models.Model, action: str, changes: dict[str, list[Any]]) -> None:
    model = type(instance).__name__
    name = _policy_name(instance)
    user = _current_user()
    log.info(
        "policy change: %s %s %s by %s",
        model,
        name,
        action,
        user or "-",
        extra={
            "event": "policy_change",
            "model": model,
            "policy": name,
            "action": action,
            "changes": changes,
            "user": user,
        },
    )


@receiver(pre_save, sender=RateLimitPolicy)
@receiver(pre_save, sender=RateLimitOverride)
@receiver(pre_save, sender=CircuitBreakerPolicy)
def _remember_before(sender: type[models.Model], instance: models.Model, raw: bool = False, **kwargs: Any) -> None:
    if raw or instance.pk is None:
        instance._audit_before = None  # type: ignore[attr-defined]  # read back in post_save
        return
    old = sender._default_manager.filter(pk=instance.pk).first()
    instance._audit_before = _fields(old) if old is not None else None  # type: ignore[attr-defined]  # likewise


@receiver(post_save, sender=RateLimitPolicy)
@receiver(post_save, sender=RateLimitOverride)
@receiver(post_save, sender=CircuitBreakerPolicy)
def _log_saved(
    sender: type[models.Model], instance: models.Model, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    if raw:
        return
    after = _fields(instance)
    before = getattr(instance, "_audit_before", None)
    if created or before is None:
        _log_change(instance, "created", {name: [None, value] for name, value in after.items()})
        return
    changes = {name: [before.get(name), value] for name, value in after.items() if before.get(name) != value}
    _log_change(instance, "updated", changes)


@receiver(post_delete, sender=RateLimitPolicy)
@receiver(post_delete, sender=RateLimitOverride)
@receiver(post_delete, sender=CircuitBreakerPolicy)
def _log_deleted(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    _log_change(instance, "deleted", {name: [value, None] for name, value in _fields(instance).items()})


# --- sampled refusals ----------------------------------------------------------------------

# At most one rate_limited line per policy per this many seconds per worker: a flood of 429s
# must not become a flood of log lines; the metrics count every one of them.
RATE_LIMITED_LOG_INTERVAL = 1.0
_last_logged: dict[str, float] = {}
_suppressed: dict[str, int] = {}
_lock = threading.Lock()


def rate_limited(request: Any, policies: Iterable[str], retry_after: int) -> None:
    """Log a sampled event="rate_limited" line for each refusing policy not logged in the last interval."""
    now = time.monotonic()
    due: list[tuple[str, int]] = []
    with _lock:
        for name in policies:
            if now - _last_logged.get(name, float("-inf")) >= RATE_LIMITED_LOG_INTERVAL:
                _last_logged[name] = now
                due.append((name, _suppressed.pop(name, 0)))
            else:
                _suppressed[name] = _suppressed.get(name, 0) + 1
    for name, suppressed in due:
        log.warning(
            "rate limited by %s",
            name,
            extra={
                "event": "rate_limited",
                "policy": name,
                # None for a limit() in code outside a request (a task, a command)
                "method": getattr(request, "method", ""),
                "path": getattr(request, "path", ""),
                "retry_after": retry_after,
                # Refusals by this policy in this worker since its previous line, not logged.
                "suppressed": suppressed,
            },
        )


def log_bulk_update(before: Iterable[models.Model], fields: dict[str, Any], action: str = "updated") -> None:
    """Log rows changed by a queryset update (which sends no model signals), as a save would."""
    for instance in before:
        changes = {
            name: [_value(getattr(instance, name)), _value(value)]
            for name, value in fields.items()
            if not isinstance(value, models.expressions.Combinable) and getattr(instance, name) != value
        }
        if changes or action != "updated":
            _log_change(instance, action, changes)
