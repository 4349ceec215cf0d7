"""Staff edit policies here; every save is in force on every worker within a second (Redis), or 5 s at worst."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from resilience import services
from resilience.db import guard as database
from resilience.engine.breaker import State, StoreUnavailable
from resilience.engine.limiter import parse_rate
from resilience.models import CircuitBreakerPolicy, ConcurrencyPolicy, RateLimitOverride, RateLimitPolicy
from resilience.runtime import POLICY_BACKSTOP_SECONDS, get_runtime
from resilience.runtime.policies import BREAKER, CONCURRENCY, RATELIMIT, policy_problem

if TYPE_CHECKING:
    # What the mixins are mixed into, so that their super() calls type-check; plain mixins at run time.
    _AdminBase = admin.options.BaseModelAdmin[Any]
    _ModelAdminBase = admin.ModelAdmin[Any]
else:
    _AdminBase = _ModelAdminBase = object


class BoundsShownMixin(_AdminBase):
    """Give number inputs the min and max of their model validators, so the browser shows and enforces them."""

    def formfield_for_dbfield(self, db_field: models.Field[Any, Any], request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if isinstance(field, forms.IntegerField | forms.DecimalField):
            for validator in db_field.validators:
                if isinstance(validator, MinValueValidator):
                    field.widget.attrs["min"] = validator.limit_value
                elif isinstance(validator, MaxValueValidator):
                    field.widget.attrs["max"] = validator.limit_value
        return field


def _in_force(
    obj: RateLimitPolicy | CircuitBreakerPolicy | ConcurrencyPolicy,
    kind: str,
    recent: dict[tuple[str, str], dict[str, Any]],
) -> str:
    """Return the "in force" cell: red when the policy is skipped, or failed requests lately; else "yes"."""
    problem = policy_problem(obj)
    if problem is not None:
        return format_html('<strong style="color:#c62828" title="{}">skipped: {}</strong>', problem, problem)
    error = recent.get((kind, obj.name))
    if error is not None and float(error["at"]) >= obj.updated_at.timestamp():
        ago = max(0, round(time.time() - float(error["at"])))
        return format_html(
            '<strong style="color:#c62828" title="{}">{} error {} s ago: {}</strong>',
            error["reason"],
            error["stage"],
            ago,
            error["reason"],
        )
    return "yes" if obj.enabled else "—"


class RateLimitPolicyForm(forms.ModelForm[RateLimitPolicy]):
    rate = forms.CharField(
        required=False,
        help_text='Shortcut for limit and period, e.g. "100/minute", "5/10s", "1000/hour". Overrides both.',
    )

    class Meta:
        model = RateLimitPolicy
        fields = [
            "name", "enabled", "mode", "priority", "methods", "match_type", "pattern", "key", "header_name",
            "algorithm", "limit", "period", "burst", "exempt_staff", "on_store_failure",
        ]  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["limit"].required = False

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        rate = (data.get("rate") or "").strip()
        if rate:
            try:
                parsed = parse_rate(rate)
            except ValueError as e:
                self.add_error("rate", str(e))
                return data
            data["limit"], data["period"] = parsed.limit, parsed.period
            self.instance.limit, self.instance.period = parsed.limit, parsed.period
        elif data.get("limit") is None:
            self.add_error("limit", "Give a limit, or a rate such as 100/minute.")
        return data


class RateLimitOverrideInline(BoundsShownMixin, admin.TabularInline[RateLimitOverride, RateLimitPolicy]):
    model = RateLimitOverride
    extra = 0
    fields = ["key_value", "limit", "note"]


_page = threading.local()


def _at(seconds: float) -> str:
    """Return the local wall-clock time ``seconds`` from now, rounded up to the whole second."""
    # Rounded up: a truncated time would name a moment up to a second before the promise holds.
    deadline = datetime.fromtimestamp(math.ceil(timezone.now().timestamp() + seconds), tz=UTC)
    return timezone.localtime(deadline).strftime("%H:%M:%S")


def propagation_notice(report: services.Propagation) -> tuple[int, str] | None:
    """Return the message level and text that tell staff when their changes reach every worker."""
    if not report.changes:
        return None
    if report.failed:
        return messages.WARNING, (
            f"The change is committed, but the workers could not be told at once (Redis: {report.errors[-1]}). "
            f"Each worker compares the policy version kept in PostgreSQL: the change reaches every worker "
            f"within {POLICY_BACKSTOP_SECONDS} s, by {_at(POLICY_BACKSTOP_SECONDS)}."
        )
    if not get_runtime().uses_redis:
        return messages.INFO, (
            f"Without Redis, each worker finds this change in PostgreSQL: it reaches every worker within "
            f"{POLICY_BACKSTOP_SECONDS} s, by {_at(POLICY_BACKSTOP_SECONDS)}."
        )
    return messages.INFO, f"In force on every worker by {_at(1)} (each worker reloads within a second)."


def _announce_propagation(admin_obj: admin.ModelAdmin[Any], request: HttpRequest, report: services.Propagation) -> None:
    """Tell staff when the changes a view just committed are enforced everywhere."""
    notice = propagation_notice(report)
    if notice is None:
        return
    level, text = notice
    admin_obj.message_user(
        request,
        format_html(
            '{} <a href="{}">The dashboard</a> shows which workers have loaded it.',
            text,
            reverse("resilience-dashboard"),
        ),
        level=level,
    )


class PropagationNoticeMixin(_ModelAdminBase):
    """After a view that changed policies, say whether and when the change is in force on all workers.

    The change and delete views run in transaction.atomic and the workers are told after commit,
    so the outcome is known only once the view has returned. MessageMiddleware stores messages
    after that, so a notice added here still reaches the staff member's next page.
    """

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        with services.propagation_report() as report:
            response = super().changeform_view(request, object_id, form_url, extra_context)
        _announce_propagation(self, request, report)
        return response

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        with services.propagation_report() as report:
            response = super().delete_view(request, object_id, extra_context)
        _announce_propagation(self, request, report)
        return response

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Actions (enable, disable, reset counters, delete selected) run from the change list.
        with services.propagation_report() as report:
            response = super().changelist_view(request, extra_context)
        _announce_propagation(self, request, report)
        return response


def _log(admin_obj: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any], message: str) -> None:
    for obj in queryset:
        admin_obj.log_change(request, obj, message)


@admin.register(RateLimitPolicy)
class RateLimitPolicyAdmin(BoundsShownMixin, PropagationNoticeMixin, admin.ModelAdmin[RateLimitPolicy]):
    form = RateLimitPolicyForm
    inlines = [RateLimitOverrideInline]
    list_display = [
        "name",
        "enabled",
        "in_force",
        "mode",
        "rate_display",
        "algorithm",
        "burst_display",
        "key_display",
        "match_display",
        "priority",
        "on_store_failure",
        "usage",
    ]
    list_filter = ["enabled", "mode", "algorithm", "key", "match_type", "on_store_failure"]
    search_fields = ["name", "pattern", "header_name"]
    actions = ["enable", "disable", "dry_run", "enforce", "reset_counters"]
    fieldsets = (
        (None, {"fields": ("name", "enabled", "mode", "priority")}),
        ("Which requests", {"fields": ("methods", "match_type", "pattern")}),
        ("Counted by", {"fields": ("key", "header_name")}),
        ("Limit", {"fields": ("rate", "algorithm", "limit", "period", "burst")}),
        ("Behaviour", {"fields": ("exempt_staff", "on_store_failure")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[RateLimitPolicy]:
        return super().get_queryset(request).prefetch_related("overrides")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Errors workers recorded lately, read once for the whole page (kept per thread, see _page).
        _page.errors = get_runtime().policy_errors.recent()
        return super().changelist_view(request, extra_context)

    @admin.display(description="in force")
    def in_force(self, obj: RateLimitPolicy) -> str:
        return _in_force(obj, RATELIMIT, getattr(_page, "errors", {}))

    @admin.display(description="limit", ordering="limit")
    def rate_display(self, obj: RateLimitPolicy) -> str:
        return f"{obj.limit} / {obj.period} s"

    @admin.display(description="burst (q) and refill (w)", ordering="burst")
    def burst_display(self, obj: RateLimitPolicy) -> str:
        # What clients see in RateLimit-Policy: a token bucket states its burst and its refill time.
        return obj.burst_summary() or "—"

    @admin.display(description="key", ordering="key")
    def key_display(self, obj: RateLimitPolicy) -> str:
        if obj.match_type == "code" and obj.key == RateLimitPolicy.Key.USER:
            return "the key code passes"  # a username tried at sign-in, say: what limit(key=...) names
        return f"header {obj.header_name}" if obj.key == RateLimitPolicy.Key.HEADER else obj.key

    @admin.display(description="applies to")
    def match_display(self, obj: RateLimitPolicy) -> str:
        if obj.match_type == "code":
            return f'code: limit("{obj.pattern}")'
        methods = obj.methods or "any"
        return f"{methods} {obj.match_type}: {obj.pattern}"

    @admin.display(description="live usage")
    def usage(self, obj: RateLimitPolicy) -> str:
        # Only a global policy has one counter worth showing; per-client usage is in the dashboard.
        if obj.key != RateLimitPolicy.Key.GLOBAL or not obj.enabled:
            return "—"
        decision = services.policy_usage(policy=obj, key="all")
        if decision is None:
            return "unavailable"
        return f"{decision.limit - decision.remaining} of {decision.limit} used"

    @admin.action(description="Enable selected policies")
    def enable(self, request: HttpRequest, queryset: QuerySet[RateLimitPolicy]) -> None:
        n = services.policy_update(policies=queryset, enabled=True)
        _log(self, request, queryset, "Enabled")
        self.message_user(request, f"{n} policy(ies) enabled")

    @admin.action(description="Disable selected policies")
    def disable(self, request: HttpRequest, queryset: QuerySet[RateLimitPolicy]) -> None:
        n = services.policy_update(policies=queryset, enabled=False)
        _log(self, request, queryset, "Disabled")
        self.message_user(request, f"{n} policy(ies) disabled")

    @admin.action(description="Switch selected policies to dry run")
    def dry_run(self, request: HttpRequest, queryset: QuerySet[RateLimitPolicy]) -> None:
        n = services.policy_update(policies=queryset, mode=RateLimitPolicy.Mode.DRY_RUN)
        _log(self, request, queryset, "Switched to dry run")
        self.message_user(request, f"{n} policy(ies) in dry run")

    @admin.action(description="Enforce selected policies")
    def enforce(self, request: HttpRequest, queryset: QuerySet[RateLimitPolicy]) -> None:
        n = services.policy_update(policies=queryset, mode=RateLimitPolicy.Mode.ENFORCE)
        _log(self, request, queryset, "Enforced")
        self.message_user(request, f"{n} policy(ies) enforced")

    @admin.action(description="Reset counters of selected policies")
    def reset_counters(self, request: HttpRequest, queryset: QuerySet[RateLimitPolicy]) -> None:
        n = services.policy_reset(policies=queryset)
        _log(self, request, queryset, "Counters reset")
        self.message_user(request, f"{n} policy(ies) reset", level=messages.SUCCESS)


@admin.register(CircuitBreakerPolicy)
class CircuitBreakerPolicyAdmin(BoundsShownMixin, PropagationNoticeMixin, admin.ModelAdmin[CircuitBreakerPolicy]):
    list_display = [
        "name",
        "enabled",
        "in_force",
        "live_state",
        "live_counts",
        "opened_at",
        "match_display",
        "failure_threshold",
        "failure_rate",
        "open_seconds",
        "half_open_max_calls",
        "fallback",
    ]
    list_filter = ["enabled", "fallback", "window_kind", "match_type"]
    search_fields = ["name", "pattern"]
    actions = ["reset", "force_open", "force_close", "release"]
    fieldsets = (
        (None, {"fields": ("name", "enabled")}),
        ("Which requests", {"fields": ("methods", "match_type", "pattern")}),
        ("Failures", {"fields": ("failure_statuses", "slow_call_ms")}),
        (
            "Tripping",
            {"fields": ("failure_threshold", "failure_rate", "window_kind", "window_size", "minimum_calls")},
        ),
        ("Recovery", {"fields": ("open_seconds", "half_open_max_calls")}),
        ("While open", {"fields": ("fallback", "stale_max_age")}),
    )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # One pipelined read of every breaker's live state for the whole page, kept per thread
        # because one ModelAdmin instance serves every request of a threaded worker.
        try:
            rows = services.breaker_status(policies=CircuitBreakerPolicy.objects.all())
        except StoreUnavailable:
            rows = []
        _page.live = {row["name"]: row for row in rows}
        _page.errors = get_runtime().policy_errors.recent()
        return super().changelist_view(request, extra_context)

    @admin.display(description="in force")
    def in_force(self, obj: CircuitBreakerPolicy) -> str:
        return _in_force(obj, BREAKER, getattr(_page, "errors", {}))

    def _row(self, obj: CircuitBreakerPolicy) -> dict[str, Any] | None:
        return getattr(_page, "live", {}).get(obj.name)

    @admin.display(description="state")
    def live_state(self, obj: CircuitBreakerPolicy) -> str:
        row = self._row(obj)
        if row is None:
            return "unavailable"
        return str(row["summary"])

    @admin.display(description="failures (consecutive / window)")
    def live_counts(self, obj: CircuitBreakerPolicy) -> str:
        row = self._row(obj)
        if row is None:
            return "—"
        return f"{row['consecutive_failures']} / {row['window_failures']} of {row['window_calls']}"

    @admin.display(description="opened at")
    def opened_at(self, obj: CircuitBreakerPolicy) -> str:
        row = self._row(obj)
        if row is None or not row["opened_at"]:
            return "—"
        return datetime.fromtimestamp(float(row["opened_at"]), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    @admin.display(description="applies to")
    def match_display(self, obj: CircuitBreakerPolicy) -> str:
        if obj.name == database.NAME:
            return "every PostgreSQL connection (built in)"
        if obj.match_type == "code":
            return f'code: breaker("{obj.name}")'
        return f"{obj.methods or 'any'} {obj.match_type}: {obj.pattern}"

    # The database breaker's row tunes a breaker that exists without it (resilience/db/guard.py):
    # what it guards, how it fails and its name are not the row's to change, nor is the row to delete.
    DATABASE_FIXED = (
        "name", "methods", "match_type", "pattern", "failure_statuses", "slow_call_ms", "fallback", "stale_max_age",
    )  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: CircuitBreakerPolicy | None = None) -> tuple[str, ...]:
        fixed = self.DATABASE_FIXED if obj is not None and obj.name == database.NAME else ()
        return (*super().get_readonly_fields(request, obj), *fixed)

    def has_delete_permission(self, request: HttpRequest, obj: CircuitBreakerPolicy | None = None) -> bool:
        if obj is not None and obj.name == database.NAME:
            return False
        return super().has_delete_permission(request, obj)

    def _names(self, queryset: QuerySet[CircuitBreakerPolicy]) -> list[str]:
        return list(queryset.values_list("name", flat=True))

    def _force(self, request: HttpRequest, queryset: QuerySet[CircuitBreakerPolicy], state: State | None) -> int | None:
        return self._on_store(request, partial(services.breaker_force, names=self._names(queryset), state=state))

    def _on_store(self, request: HttpRequest, action: Callable[[], int]) -> int | None:
        """Run an action on the breaker store; say that the store failed, rather than answer 500."""
        try:
            return action()
        except StoreUnavailable as e:
            get_runtime().store_failed("admin_action", e)
            self.message_user(
                request, f"The breaker store failed; some breakers may be unchanged: {e}", level=messages.ERROR
            )
            return None

    @admin.action(description="Reset selected breakers (close, clear counts)")
    def reset(self, request: HttpRequest, queryset: QuerySet[CircuitBreakerPolicy]) -> None:
        n = self._on_store(request, partial(services.breaker_reset, names=self._names(queryset)))
        if n is not None:
            _log(self, request, queryset, "Breaker reset")
            self.message_user(request, f"{n} breaker(s) reset")

    @admin.action(description="Force selected breakers open")
    def force_open(self, request: HttpRequest, queryset: QuerySet[CircuitBreakerPolicy]) -> None:
        n = self._force(request, queryset, State.FORCED_OPEN)
        if n is not None:
            _log(self, request, queryset, "Breaker forced open")
            self.message_user(request, f"{n} breaker(s) forced open", level=messages.WARNING)

    @admin.action(description="Force selected breakers closed")
    def force_close(self, request: HttpRequest, queryset: QuerySet[CircuitBreakerPolicy]) -> None:
        n = self._force(request, queryset, State.FORCED_CLOSED)
        if n is not None:
            _log(self, request, queryset, "Breaker forced closed")
            self.message_user(request, f"{n} breaker(s) forced closed", level=messages.WARNING)

    @admin.action(description="Release forced state of selected breakers")
    def release(self, request: HttpRequest, queryset: QuerySet[CircuitBreakerPolicy]) -> None:
        n = self._force(request, queryset, None)
        if n is not None:
            _log(self, request, queryset, "Breaker released")
            self.message_user(request, f"{n} breaker(s) released")


@admin.register(ConcurrencyPolicy)
class ConcurrencyPolicyAdmin(BoundsShownMixin, PropagationNoticeMixin, admin.ModelAdmin[ConcurrencyPolicy]):
    list_display = [
        "name",
        "enabled",
        "in_force",
        "mode",
        "max_in_flight",
        "live_in_flight",
        "max_wait_ms",
        "lease_seconds",
        "key_display",
        "match_display",
        "on_store_failure",
    ]
    list_filter = ["enabled", "mode", "key", "match_type", "on_store_failure"]
    search_fields = ["name", "pattern", "header_name"]
    actions = ["enable", "disable", "dry_run", "enforce", "reset_slots"]
    fieldsets = (
        (None, {"fields": ("name", "enabled", "mode")}),
        ("Which requests", {"fields": ("methods", "match_type", "pattern")}),
        ("Counted by", {"fields": ("key", "header_name")}),
        ("Limit", {"fields": ("max_in_flight", "max_wait_ms", "lease_seconds")}),
        ("Adaptive limit", {"fields": ("adaptive_floor", "adaptive_target_ms")}),
        ("Behaviour", {"fields": ("on_store_failure",)}),
    )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # One read of the live slots for the whole page, kept per thread (see CircuitBreakerPolicyAdmin).
        try:
            rows = services.concurrency_status(policies=ConcurrencyPolicy.objects.all())
        except StoreUnavailable:
            rows = []
        _page.slots = {row["name"]: row for row in rows}
        _page.errors = get_runtime().policy_errors.recent()
        return super().changelist_view(request, extra_context)

    @admin.display(description="in force")
    def in_force(self, obj: ConcurrencyPolicy) -> str:
        return _in_force(obj, CONCURRENCY, getattr(_page, "errors", {}))

    @admin.display(description="in flight now")
    def live_in_flight(self, obj: ConcurrencyPolicy) -> str:
        row = getattr(_page, "slots", {}).get(obj.name)
        if row is None or row["store"] != "shared":
            return "unavailable"
        waiting = f", {row['waiting']} waiting" if row["waiting"] else ""
        return f"{row['in_flight']}{waiting}"

    @admin.display(description="key", ordering="key")
    def key_display(self, obj: ConcurrencyPolicy) -> str:
        return f"header {obj.header_name}" if obj.key == ConcurrencyPolicy.Key.HEADER else obj.key

    @admin.display(description="applies to")
    def match_display(self, obj: ConcurrencyPolicy) -> str:
        if obj.match_type == "code":
            return f'code: bulkhead("{obj.name}")'
        return f"{obj.methods or 'any'} {obj.match_type}: {obj.pattern}"

    def _update(self, request: HttpRequest, queryset: QuerySet[ConcurrencyPolicy], what: str, **fields: Any) -> None:
        n = services.policy_update(policies=queryset, **fields)
        _log(self, request, queryset, what)
        self.message_user(request, f"{n} policy(ies): {what.lower()}")

    @admin.action(description="Enable selected policies")
    def enable(self, request: HttpRequest, queryset: QuerySet[ConcurrencyPolicy]) -> None:
        self._update(request, queryset, "Enabled", enabled=True)

    @admin.action(description="Disable selected policies")
    def disable(self, request: HttpRequest, queryset: QuerySet[ConcurrencyPolicy]) -> None:
        self._update(request, queryset, "Disabled", enabled=False)

    @admin.action(description="Switch selected policies to dry run")
    def dry_run(self, request: HttpRequest, queryset: QuerySet[ConcurrencyPolicy]) -> None:
        self._update(request, queryset, "Switched to dry run", mode=ConcurrencyPolicy.Mode.DRY_RUN)

    @admin.action(description="Enforce selected policies")
    def enforce(self, request: HttpRequest, queryset: QuerySet[ConcurrencyPolicy]) -> None:
        self._update(request, queryset, "Enforced", mode=ConcurrencyPolicy.Mode.ENFORCE)

    @admin.action(description="Give back every slot of selected policies")
    def reset_slots(self, request: HttpRequest, queryset: QuerySet[ConcurrencyPolicy]) -> None:
        try:
            n = services.concurrency_reset(policies=queryset)
        except StoreUnavailable as e:
            get_runtime().store_failed("admin_action", e)
            self.message_user(request, f"The slot store failed; some slots may be held: {e}", level=messages.ERROR)
            return
        _log(self, request, queryset, "Slots reset")
        self.message_user(request, f"{n} policy(ies): slots given back", level=messages.SUCCESS)
