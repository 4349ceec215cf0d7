"""Any change to a policy row, from anywhere, reaches every worker: within a second, or 5 s if Redis misses it."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from resilience.models import CircuitBreakerPolicy, ConcurrencyPolicy, RateLimitOverride, RateLimitPolicy
from resilience.services import policies_changed


@receiver([post_save, post_delete], sender=RateLimitPolicy)
@receiver([post_save, post_delete], sender=RateLimitOverride)
@receiver([post_save, post_delete], sender=CircuitBreakerPolicy)
@receiver([post_save, post_delete], sender=ConcurrencyPolicy)
def _policy_changed(sender: type, **kwargs: object) -> None:
    policies_changed()
