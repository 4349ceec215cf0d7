"""Resilience policies: rows that staff edit in the admin and every worker enforces within a second."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import BaseValidator, MaxValueValidator, MinValueValidator
from django.db import connection, models
from django.db.models.functions import Cast

from resilience.engine.breaker import (
    MAX_COUNT_WINDOW,
    MAX_FAILURE_STATUS,
    MAX_FAILURE_THRESHOLD,
    MAX_HALF_OPEN_CALLS,
    MAX_MINIMUM_CALLS,
    MAX_OPEN_SECONDS,
    MAX_SLOW_CALL_MS,
    MAX_STALE_MAX_AGE,
    MAX_TIME_WINDOW,
    MIN_FAILURE_STATUS,
)
from resilience.engine.concurrency import MAX_IN_FLIGHT, MAX_LEASE_SECONDS, MAX_TARGET_MS, MAX_WAIT_MS
from resilience.engine.limiter import (
    MAX_BURST,
    MAX_CAPACITY_SECONDS,
    MAX_LIMIT,
    MAX_PERIOD,
    MAX_PRIORITY,
    MIN_PRIORITY,
    SLIDING_LOG_MAX,
    Algorithm,
    capacity_fits,
    max_burst,
    quota_window,
)
from resilience.engine.patterns import MAX_MATCH_PATH, PatternError, compile_pattern

HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
# What a SlugField accepts, as a CHECK constraint: names go into HTTP header fields and Redis keys.
NAME_REGEX = r"^[-a-zA-Z0-9_]+\Z"
# A failure-status list as clean() stores it: "429,500-599" (error statuses, no spaces).
_STATUS = r"[45][0-9][0-9]"
STATUSES_REGEX = rf"^{_STATUS}(-{_STATUS})?(,{_STATUS}(-{_STATUS})?)*\Z"


def between(low: int, high: int) -> list[BaseValidator]:
    """Return the validators of a number in [low, high]; the admin form shows both bounds."""
    return [MinValueValidator(low), MaxValueValidator(high)]


def hash_key_value(value: str) -> str:
    """Return the stored form of a header value: a SHA-256 prefix, so secrets never reach Redis."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def code_key_value(value: str) -> str:
    """Return the stored form of a key code passes to limit(): normalised, then hashed.

    NFKC and casefold, as usernames are compared, so "Admin", "ADMIN" and "ａｄｍｉｎ" share one
    counter; hashed, so Redis never holds the usernames (or emails) people tried.
    """
    return "k" + hash_key_value(unicodedata.normalize("NFKC", value).casefold().strip())


class Match(models.TextChoices):
    PREFIX = "prefix", "Path prefix"
    REGEX = "regex", "Path regular expression"
    ROUTE = "route", "URL route name"
    TAG = "tag", "View tag"
    CODE = "code", "Only where code uses it by name"


class PolicyBase(models.Model):
    """Fields shared by rate-limit and breaker policies: what requests a policy applies to."""

    name = models.SlugField(
        max_length=64, unique=True, help_text="Unique; shown to clients in RateLimit headers and in metrics."
    )
    enabled = models.BooleanField(default=True, help_text="Disabled policies are ignored everywhere.")
    methods = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="Comma-separated HTTP methods (GET,POST); empty matches every method.",
    )
    match_type = models.CharField(
        max_length=8,
        choices=Match.choices,
        default=Match.PREFIX,
        help_text="prefix (default): path starts with pattern; regex: an RE2 regular expression matched at the "
        "start of the path (no backreferences or lookaround; a path over "
        f"{MAX_MATCH_PATH} characters counts as matching); route: the URL pattern's name; tag: a tag the view "
        "declares in resilience_tags.",
    )
    pattern = models.CharField(max_length=300, default="/", help_text="Path prefix, regex, route name or tag.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.name

    def method_set(self) -> frozenset[str]:
        """Return the upper-cased methods, empty meaning all."""
        return frozenset(m.strip().upper() for m in self.methods.split(",") if m.strip())

    def clean(self) -> None:
        errors = self.base_errors()
        if errors:
            raise ValidationError(errors)

    def base_errors(self) -> dict[str, str]:
        """Return the errors of the fields every policy has (a subclass's clean() adds its own to them)."""
        super().clean()
        errors: dict[str, str] = {}
        for method in self.method_set():
            if not re.fullmatch(r"[A-Z]{3,10}", method):
                errors["methods"] = f"{method!r} is not an HTTP method."
        self.methods = ",".join(sorted(self.method_set()))
        if self.match_type == Match.REGEX:
            try:
                compile_pattern(self.pattern)
            except PatternError as e:
                errors["pattern"] = (
                    f"{e.reason[0].upper()}{e.reason[1:]}. Patterns run on RE2, in time linear in the path: "
                    "it has no backreferences, lookahead or lookbehind, atomic groups or possessive quantifiers."
                )
        elif self.match_type == Match.PREFIX and not self.pattern.startswith("/"):
            errors["pattern"] = "A path prefix starts with '/'."
        elif self.match_type in (Match.ROUTE, Match.TAG) and not self.pattern.strip():
            errors["pattern"] = "Give a route name or tag."
        return errors


class RateLimitPolicy(PolicyBase):
    class Key(models.TextChoices):
        IP = "ip", "Client IP (IPv6 by /64)"
        USER = "user", "User (token or session; anonymous clients by IP)"
        HEADER = "header", "Request header (hashed)"
        GLOBAL = "global", "Everyone together"

    class Mode(models.TextChoices):
        ENFORCE = "enforce", "Enforce"
        DRY_RUN = "dry_run", "Dry run (count, never block)"

    class OnStoreFailure(models.TextChoices):
        ALLOW = "allow", "Allow: limit per worker in process"
        DENY = "deny", "Deny: answer 503"

    priority = models.IntegerField(
        default=100,
        validators=between(MIN_PRIORITY, MAX_PRIORITY),
        help_text=f"Lower first; ties by name. Orders the headers ({MIN_PRIORITY} to {MAX_PRIORITY}; default 100).",
    )
    key = models.CharField(max_length=8, choices=Key.choices, default=Key.IP, help_text="What is counted.")
    header_name = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="With key=header: the header to count by, e.g. X-App-Id.",
    )
    algorithm = models.CharField(
        max_length=16,
        choices=[(a.value, a.value.replace("_", " ")) for a in Algorithm],
        default=Algorithm.SLIDING_WINDOW.value,
        help_text="sliding_window (default): exact, no boundary burst; token_bucket: GCRA with burst; "
        "fixed_window: cheapest, allows up to 2x at window edges.",
    )
    limit = models.PositiveIntegerField(
        validators=between(0, MAX_LIMIT),
        help_text=f"Requests allowed per period, 0 to {MAX_LIMIT:,} (a sliding window: at most "
        f"{SLIDING_LOG_MAX:,}); 0 blocks every request.",
    )
    period = models.PositiveIntegerField(
        default=60,
        validators=between(1, MAX_PERIOD),
        help_text=f"Seconds, 1 to {MAX_PERIOD:,} (a leap year; default 60).",
    )
    burst = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=between(1, MAX_BURST),
        help_text=f"Token bucket only: largest burst, 1 to {MAX_BURST:,}, that refills within "
        f"{MAX_CAPACITY_SECONDS:,} s (burst × period / limit); empty means the limit.",
    )
    mode = models.CharField(
        max_length=8,
        choices=Mode.choices,
        default=Mode.ENFORCE,
        help_text="enforce (default): refuse with 429; dry run: count what would be refused, refuse nothing.",
    )
    exempt_staff = models.BooleanField(default=False, help_text="Staff requests are not limited.")
    on_store_failure = models.CharField(
        max_length=8,
        choices=OnStoreFailure.choices,
        default=OnStoreFailure.ALLOW,
        help_text="When Redis is unreachable: allow (limit per worker in process) or deny (503).",
    )
    # Bumped by "reset counters": keys embed it, so every counter starts afresh at once.
    epoch = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["priority", "name"]
        verbose_name = "rate-limit policy"
        verbose_name_plural = "rate-limit policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(period__gte=1, period__lte=MAX_PERIOD), name="ratelimit_period_bounded"
            ),
            models.CheckConstraint(condition=models.Q(limit__lte=MAX_LIMIT), name="ratelimit_limit_bounded"),
            models.CheckConstraint(
                condition=~models.Q(algorithm=Algorithm.SLIDING_WINDOW.value) | models.Q(limit__lte=SLIDING_LOG_MAX),
                name="ratelimit_sliding_limit_bounded",
            ),
            models.CheckConstraint(
                condition=models.Q(burst__isnull=True)
                | models.Q(burst__gte=1, burst__lte=MAX_BURST, algorithm=Algorithm.TOKEN_BUCKET.value),
                name="ratelimit_burst_bounded",
            ),
            # burst * period / limit <= MAX_CAPACITY_SECONDS, in integers; bigint, as the product
            # of two int columns overflows PostgreSQL's integer.
            models.CheckConstraint(
                condition=models.Q(burst__isnull=True)
                | models.Q(limit=0)
                | models.Q(
                    models.lookups.LessThanOrEqual(
                        Cast("burst", models.BigIntegerField()) * models.F("period"),
                        Cast("limit", models.BigIntegerField()) * MAX_CAPACITY_SECONDS,
                    )
                ),
                name="ratelimit_burst_refills_in_time",
            ),
            models.CheckConstraint(
                condition=models.Q(priority__gte=MIN_PRIORITY, priority__lte=MAX_PRIORITY),
                name="ratelimit_priority_bounded",
            ),
            models.CheckConstraint(condition=models.Q(name__regex=NAME_REGEX), name="ratelimit_name_slug"),
            models.CheckConstraint(
                condition=models.Q(match_type__in=[m.value for m in Match]), name="ratelimit_match_type_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(on_store_failure__in=["allow", "deny"]), name="ratelimit_on_store_failure_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(key__in=["ip", "user", "header", "global"]), name="ratelimit_key_valid"
            ),
            models.CheckConstraint(condition=models.Q(mode__in=["enforce", "dry_run"]), name="ratelimit_mode_valid"),
            models.CheckConstraint(
                condition=models.Q(algorithm__in=[a.value for a in Algorithm]),
                name="ratelimit_algorithm_valid",
            ),
        ]

    @property
    def rate(self) -> str:
        return f"{self.limit}/{self.period}s"

    def stated_quota(self) -> tuple[int, int]:
        """Return the (q, w) RateLimit-Policy states for this policy: a token bucket's burst and refill time."""
        return quota_window(self.algorithm, self.limit, self.period, self.burst)

    def burst_summary(self) -> str:
        """Return "burst 20, refills in 12 s" for a token bucket (what clients see as q and w), else ""."""
        if self.algorithm != Algorithm.TOKEN_BUCKET:
            return ""
        if self.limit <= 0:
            return "no burst (limit 0)"
        quota, window = self.stated_quota()
        return f"burst {quota}, refills in {window} s"

    def clean(self) -> None:
        # All at once: a bad pattern must not hide a bad number (the form shows every error).
        errors = self.base_errors()
        if self.match_type == Match.CODE and not re.fullmatch(NAME_REGEX, self.pattern or ""):
            errors["pattern"] = 'Give the name code asks for, as in limit("admin-login", key=username).'
        if self.key == self.Key.HEADER and not HEADER_NAME_RE.fullmatch(self.header_name or ""):
            errors["header_name"] = "Give the header name, e.g. X-App-Id."
        if self.key != self.Key.HEADER:
            self.header_name = ""
        if self.period is not None and not 1 <= self.period <= MAX_PERIOD:
            errors["period"] = f"Between 1 and {MAX_PERIOD} seconds."
        if self.limit is not None and self.limit > MAX_LIMIT:
            errors["limit"] = f"At most {MAX_LIMIT}."
        if self.algorithm == Algorithm.SLIDING_WINDOW and self.limit is not None and self.limit > SLIDING_LOG_MAX:
            errors["limit"] = f"A sliding window keeps one entry per request: at most {SLIDING_LOG_MAX}."
        if self.burst is not None and self.algorithm != Algorithm.TOKEN_BUCKET:
            errors["burst"] = "Only a token bucket has a burst."
        elif (
            self.burst is not None
            and self.limit is not None
            and self.period is not None
            and 1 <= self.period <= MAX_PERIOD
            and not capacity_fits(self.limit, self.period, self.burst)
        ):
            errors["burst"] = (
                f"This burst takes {self.burst * self.period / self.limit:,.0f} s to refill (burst × period / limit); "
                f"at most {MAX_CAPACITY_SECONDS:,} s: a burst of at most {max_burst(self.limit, self.period):,}."
            )
        if self.pk is not None and self.algorithm == Algorithm.SLIDING_WINDOW and "limit" not in errors:
            # Switching to a sliding window: its overrides are sliding-window limits too.
            too_big = [o.key_value for o in self.overrides.all() if o.limit > SLIDING_LOG_MAX]
            if too_big:
                errors["algorithm"] = (
                    f"A sliding window allows at most {SLIDING_LOG_MAX} per key; lower the overrides of "
                    f"{', '.join(too_big[:3])} first."
                )
        if errors:
            raise ValidationError(errors)


class RateLimitOverride(models.Model):
    """A named key's own limit within a policy: a partner's app id gets more, an abusive IP gets 0."""

    policy = models.ForeignKey(RateLimitPolicy, on_delete=models.CASCADE, related_name="overrides")
    key_value = models.CharField(
        max_length=128,
        help_text="The IP (IPv6: its /64, e.g. 2001:db8:1:2::/64), username or user id, or header value "
        "(stored hashed) this override applies to.",
    )
    limit = models.PositiveIntegerField(
        validators=between(0, MAX_LIMIT),
        help_text=f"Requests per the policy's period for this key, 0 to {MAX_LIMIT:,} (a sliding window: at most "
        f"{SLIDING_LOG_MAX:,}); 0 blocks it.",
    )
    note = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["policy", "key_value"], name="ratelimit_override_unique"),
            models.CheckConstraint(condition=models.Q(limit__lte=MAX_LIMIT), name="ratelimit_override_bounded"),
        ]

    def __str__(self) -> str:
        return f"{self.policy.name}: {self.key_value} → {self.limit}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self._hash_header_value()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
        try:
            policy = self.policy  # the admin's inline sets it, saved or not
        except RateLimitPolicy.DoesNotExist:
            return
        if policy.algorithm == Algorithm.SLIDING_WINDOW and self.limit is not None and self.limit > SLIDING_LOG_MAX:
            raise ValidationError(
                {"limit": f"A sliding window keeps one entry per request: at most {SLIDING_LOG_MAX}."}
            )
        if not self.key_value or self.policy_id is None:
            return  # a policy not saved yet has no overrides to clash with
        # An inline form leaves the policy out of constraint validation, so a repeated key would
        # only fail at INSERT (a 500 in the admin): check it here, in its stored (hashed) form.
        self._hash_header_value()
        clash = RateLimitOverride.objects.filter(policy_id=self.policy_id, key_value=self.key_value)
        if clash.exclude(pk=self.pk).exists():
            raise ValidationError({"key_value": "This policy already has an override for this key."})

    def _hash_header_value(self) -> None:
        # Header values are secrets (API keys): only their hash is stored and compared.
        if self.policy.key == RateLimitPolicy.Key.HEADER and not re.fullmatch(r"[0-9a-f]{32}", self.key_value):
            self.key_value = hash_key_value(self.key_value)


def parse_status_set(text: str) -> frozenset[int]:
    """Return the error statuses in "500-599,429" style text; raise ValueError on bad input."""
    statuses: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if dash and not high.strip():
            raise ValueError(f"{part!r} is not a status or a range like 500-599.")
        try:
            first, last = int(low), int(high or low)
        except ValueError as e:
            raise ValueError(f"{part!r} is not a status or a range like 500-599.") from e
        if first > last:
            raise ValueError(f"{part!r} runs backwards: write the lower status first.")
        if not MIN_FAILURE_STATUS <= first <= last <= MAX_FAILURE_STATUS:
            raise ValueError(
                f"{part!r} is outside {MIN_FAILURE_STATUS}-{MAX_FAILURE_STATUS}: only error statuses can be failures."
            )
        statuses.update(range(first, last + 1))
    return frozenset(statuses)


def format_status_set(statuses: frozenset[int]) -> str:
    """Return statuses as the shortest "429,500-599" text (what parse_status_set reads back)."""
    runs: list[list[int]] = []
    for status in sorted(statuses):
        if runs and status == runs[-1][1] + 1:
            runs[-1][1] = status
        else:
            runs.append([status, status])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in runs)


class CircuitBreakerPolicy(PolicyBase):
    """A circuit breaker around matched routes and/or code that names it: `with breaker("search"):`."""

    class WindowKind(models.TextChoices):
        COUNT = "count", "Last N calls"
        TIME = "time", "Last N seconds"

    class Fallback(models.TextChoices):
        ERROR = "error", "503 error"
        STALE = "stale", "Last good response (GET), else 503"

    failure_statuses = models.CharField(
        max_length=100,
        default="500-599",
        help_text='Response statuses that count as failures, e.g. "500-599" (default) or "429,500-599"; '
        f"error statuses only ({MIN_FAILURE_STATUS}-{MAX_FAILURE_STATUS}). Unhandled exceptions always count.",
    )
    slow_call_ms = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=between(1, MAX_SLOW_CALL_MS),
        help_text=f"A call slower than this many milliseconds (1 to {MAX_SLOW_CALL_MS:,}) counts as a failure; "
        "empty: off.",
    )
    failure_threshold = models.PositiveIntegerField(
        default=5,
        validators=between(0, MAX_FAILURE_THRESHOLD),
        help_text=f"Consecutive failures that trip the breaker, 0 to {MAX_FAILURE_THRESHOLD:,} "
        "(default 5; 0 turns the rule off).",
    )
    failure_rate = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=0,
        validators=between(0, 100),
        help_text="Failure percentage over the window that trips it (0-100; default 0 = off).",
    )
    window_kind = models.CharField(
        max_length=8,
        choices=WindowKind.choices,
        default=WindowKind.COUNT,
        help_text="count (default): the last N calls; time: the last N seconds.",
    )
    window_size = models.PositiveIntegerField(
        default=20,
        validators=between(1, MAX_COUNT_WINDOW),
        help_text=f"Calls (1 to {MAX_COUNT_WINDOW:,}) or seconds (1 to {MAX_TIME_WINDOW:,}) in the window "
        "(default 20).",
    )
    minimum_calls = models.PositiveIntegerField(
        default=10,
        validators=between(0, MAX_MINIMUM_CALLS),
        help_text=f"The rate rule applies once the window holds this many calls, 0 to {MAX_MINIMUM_CALLS:,} "
        "(default 10).",
    )
    open_seconds = models.PositiveIntegerField(
        default=30,
        validators=between(1, MAX_OPEN_SECONDS),
        help_text=f"Seconds the breaker stays open before trial calls, 1 to {MAX_OPEN_SECONDS:,} (a day; default 30).",
    )
    half_open_max_calls = models.PositiveIntegerField(
        default=1,
        validators=between(1, MAX_HALF_OPEN_CALLS),
        help_text=f"Trial calls admitted across all workers when half-open, 1 to {MAX_HALF_OPEN_CALLS:,} (default 1): "
        "all must succeed to close; any failure re-opens.",
    )
    fallback = models.CharField(
        max_length=8,
        choices=Fallback.choices,
        default=Fallback.ERROR,
        help_text="While open: error (default) answers 503; stale serves the last good GET response when kept.",
    )
    stale_max_age = models.PositiveIntegerField(
        default=300,
        validators=between(1, MAX_STALE_MAX_AGE),
        help_text=f"Stale fallback: keep the last good GET response this many seconds, 1 to {MAX_STALE_MAX_AGE:,} "
        "(a day; default 300).",
    )

    class Meta:
        ordering = ["name"]
        verbose_name = "circuit-breaker policy"
        verbose_name_plural = "circuit-breaker policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(failure_rate__gte=0) & models.Q(failure_rate__lte=100),
                name="breaker_failure_rate_percent",
            ),
            models.CheckConstraint(
                condition=models.Q(window_kind="count", window_size__gte=1, window_size__lte=MAX_COUNT_WINDOW)
                | models.Q(window_kind="time", window_size__gte=1, window_size__lte=MAX_TIME_WINDOW),
                name="breaker_window_bounded",
            ),
            models.CheckConstraint(
                condition=models.Q(open_seconds__gte=1, open_seconds__lte=MAX_OPEN_SECONDS),
                name="breaker_open_bounded",
            ),
            models.CheckConstraint(
                condition=models.Q(half_open_max_calls__gte=1, half_open_max_calls__lte=MAX_HALF_OPEN_CALLS),
                name="breaker_half_open_bounded",
            ),
            models.CheckConstraint(
                condition=models.Q(failure_threshold__lte=MAX_FAILURE_THRESHOLD), name="breaker_threshold_bounded"
            ),
            models.CheckConstraint(
                condition=models.Q(minimum_calls__lte=MAX_MINIMUM_CALLS), name="breaker_minimum_calls_bounded"
            ),
            models.CheckConstraint(
                condition=models.Q(slow_call_ms__isnull=True)
                | models.Q(slow_call_ms__gte=1, slow_call_ms__lte=MAX_SLOW_CALL_MS),
                name="breaker_slow_call_bounded",
            ),
            models.CheckConstraint(
                condition=models.Q(stale_max_age__gte=1, stale_max_age__lte=MAX_STALE_MAX_AGE),
                name="breaker_stale_max_age_bounded",
            ),
            models.CheckConstraint(
                condition=models.Q(failure_statuses__regex=STATUSES_REGEX), name="breaker_failure_statuses_errors"
            ),
            models.CheckConstraint(condition=models.Q(name__regex=NAME_REGEX), name="breaker_name_slug"),
            models.CheckConstraint(
                condition=models.Q(match_type__in=[m.value for m in Match]), name="breaker_match_type_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(window_kind__in=["count", "time"]), name="breaker_window_kind_valid"
            ),
            models.CheckConstraint(condition=models.Q(fallback__in=["error", "stale"]), name="breaker_fallback_valid"),
        ]

    def clean(self) -> None:
        # All at once: a bad pattern must not hide a bad number (the form shows every error).
        errors = self.base_errors()
        try:
            statuses = parse_status_set(self.failure_statuses or "")
        except ValueError as e:
            errors["failure_statuses"] = str(e)
        else:
            if not statuses:
                errors["failure_statuses"] = "Give at least one status."
            elif len(format_status_set(statuses)) > 100:
                errors["failure_statuses"] = "Too many separate statuses: use ranges such as 500-599."
            else:
                self.failure_statuses = format_status_set(statuses)
        if self.failure_threshold == 0 and not self.failure_rate:
            errors["failure_threshold"] = "Set a consecutive-failure threshold or a failure rate."
        time_window = self.window_kind == self.WindowKind.TIME
        if time_window and self.window_size is not None and self.window_size > MAX_TIME_WINDOW:
            errors["window_size"] = f"A time window is at most {MAX_TIME_WINDOW} seconds."
        if errors:
            raise ValidationError(errors)


class ConcurrencyPolicy(PolicyBase):
    """A bulkhead: at most N matched requests (or code blocks) in flight at once, across the whole fleet."""

    # Keyed and failing over as rate limits are.
    Key = RateLimitPolicy.Key
    OnStoreFailure = RateLimitPolicy.OnStoreFailure

    class Mode(models.TextChoices):
        ENFORCE = "enforce", "Enforce"
        DRY_RUN = "dry_run", "Dry run (count, never refuse)"

    key = models.CharField(
        max_length=8, choices=Key.choices, default=Key.GLOBAL, help_text="Whose requests share the slots."
    )
    header_name = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="With key=header: the header to count by, e.g. X-App-Id.",
    )
    max_in_flight = models.PositiveIntegerField(
        validators=between(1, MAX_IN_FLIGHT),
        help_text=f"Matched requests in flight at once per key, across every worker, 1 to {MAX_IN_FLIGHT:,}.",
    )
    max_wait_ms = models.PositiveIntegerField(
        default=0,
        validators=between(0, MAX_WAIT_MS),
        help_text=f"How long a request that finds every slot taken waits for one, in arrival order, 0 to "
        f"{MAX_WAIT_MS:,} ms (default 0: refused at once).",
    )
    lease_seconds = models.PositiveIntegerField(
        default=30,
        validators=between(1, MAX_LEASE_SECONDS),
        help_text=f"A slot held longer than this (a killed worker's) is given back, 1 to {MAX_LEASE_SECONDS:,} s "
        "(default 30); keep it above the slowest request.",
    )
    mode = models.CharField(
        max_length=8,
        choices=Mode.choices,
        default=Mode.ENFORCE,
        help_text="enforce (default): refuse with 503; dry run: count what would be refused, refuse nothing.",
    )
    on_store_failure = models.CharField(
        max_length=8,
        choices=OnStoreFailure.choices,
        default=OnStoreFailure.ALLOW,
        help_text="When Redis is unreachable: allow (each worker its share of the slots, in process) or deny (503).",
    )
    adaptive_floor = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=between(1, MAX_IN_FLIGHT),
        help_text="Adaptive: leave empty for a fixed limit. Set, the limit moves between this floor and "
        "max_in_flight from the calls' latency, once a second for the whole fleet: down by a tenth when more "
        "than a tenth of them were slower than the target, up by one when they were not.",
    )
    adaptive_target_ms = models.PositiveIntegerField(
        default=1_000,
        validators=between(1, MAX_TARGET_MS),
        help_text=f"Adaptive: the latency a call must keep to, 1 to {MAX_TARGET_MS:,} ms (default 1,000).",
    )

    class Meta:
        ordering = ["name"]
        verbose_name = "concurrency policy"
        verbose_name_plural = "concurrency policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_in_flight__gte=1, max_in_flight__lte=MAX_IN_FLIGHT),
                name="concurrency_max_in_flight_bounded",
            ),
            models.CheckConstraint(
                condition=models.Q(max_wait_ms__gte=0, max_wait_ms__lte=MAX_WAIT_MS),
                name="concurrency_max_wait_bounded",
            ),
            models.CheckConstraint(
                condition=models.Q(lease_seconds__gte=1, lease_seconds__lte=MAX_LEASE_SECONDS),
                name="concurrency_lease_bounded",
            ),
            models.CheckConstraint(condition=models.Q(name__regex=NAME_REGEX), name="concurrency_name_slug"),
            models.CheckConstraint(
                condition=models.Q(match_type__in=[m.value for m in Match]), name="concurrency_match_type_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(on_store_failure__in=["allow", "deny"]), name="concurrency_on_store_failure_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(key__in=["ip", "user", "header", "global"]), name="concurrency_key_valid"
            ),
            models.CheckConstraint(condition=models.Q(mode__in=["enforce", "dry_run"]), name="concurrency_mode_valid"),
            models.CheckConstraint(
                condition=models.Q(adaptive_floor__isnull=True)
                | models.Q(adaptive_floor__gte=1, adaptive_floor__lte=models.F("max_in_flight")),
                name="concurrency_adaptive_floor_bounded",
            ),
            models.CheckConstraint(
                condition=models.Q(adaptive_target_ms__gte=1, adaptive_target_ms__lte=MAX_TARGET_MS),
                name="concurrency_adaptive_target_bounded",
            ),
        ]

    def clean(self) -> None:
        # All at once: a bad pattern must not hide a bad number (the form shows every error).
        errors = self.base_errors()
        if self.key == self.Key.HEADER and not HEADER_NAME_RE.fullmatch(self.header_name or ""):
            errors["header_name"] = "Give the header name, e.g. X-App-Id."
        if self.key != self.Key.HEADER:
            self.header_name = ""
        if self.match_type == Match.CODE and self.key != self.Key.GLOBAL:
            # Code that names a bulkhead has no request to take a client from.
            errors["key"] = "A bulkhead used by name in code counts everyone together: choose that key."
        floor, ceiling = self.adaptive_floor, self.max_in_flight
        if floor is not None and isinstance(ceiling, int) and floor > ceiling:
            errors["adaptive_floor"] = f"The floor cannot be above max_in_flight ({ceiling})."
        if errors:
            raise ValidationError(errors)


class PolicyVersion(models.Model):
    """The one row that counts policy changes: the backstop for a change whose Redis signal was lost.

    Every change to a policy or override bumps it in the change's own transaction (resilience.
    services.policies_changed), and every worker compares it every few seconds (runtime.py).
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    version = models.BigIntegerField(default=0, help_text="Policy changes committed so far.")

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="policy_version_one_row")]

    def __str__(self) -> str:
        return f"policy version {self.version}"

    @classmethod
    def bump(cls) -> None:
        """Count one policy change, in the caller's transaction (the row stays locked until it ends)."""
        if cls.objects.filter(pk=1).update(version=models.F("version") + 1):
            return
        # The row is gone (a flushed test database): make it again; a concurrent maker may win.
        PolicyVersion.objects.bulk_create([PolicyVersion(pk=1, version=0)], ignore_conflicts=True)
        cls.objects.filter(pk=1).update(version=models.F("version") + 1)

    @classmethod
    def current(cls) -> int:
        """Return the number of policy changes committed so far (0 without the row)."""
        # Plain SQL: a request pays for this read every few seconds per worker, and building the
        # ORM query cost several times the round trip itself (~2 ms against ~0.3 ms, loaded box).
        table = connection.ops.quote_name(cls._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT version FROM {table} WHERE id = 1")
            row = cursor.fetchone()
        return int(row[0]) if row else 0
