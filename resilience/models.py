"""Resilience policies: rows that staff edit in the admin and every worker enforces within a second."""

from __future__ import annotations

import hashlib
import re

from django.core.exceptions import ValidationError
from django.db import connection, models

from resilience.limiter import MAX_LIMIT, MAX_PERIOD, SLIDING_LOG_MAX, Algorithm

HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


def hash_key_value(value: str) -> str:
    """Return the stored form of a header value: a SHA-256 prefix, so secrets never reach Redis."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


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
        help_text="prefix (default): path starts with pattern; regex: re.match against the path; "
        "route: the URL pattern's name; tag: a tag the view declares in resilience_tags.",
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
        super().clean()
        errors: dict[str, str] = {}
        for method in self.method_set():
            if not re.fullmatch(r"[A-Z]{3,10}", method):
                errors["methods"] = f"{method!r} is not an HTTP method."
        self.methods = ",".join(sorted(self.method_set()))
        if self.match_type == Match.REGEX:
            try:
                re.compile(self.pattern)
            except re.error as e:
                errors["pattern"] = f"Not a valid regular expression: {e}."
        elif self.match_type == Match.PREFIX and not self.pattern.startswith("/"):
            errors["pattern"] = "A path prefix starts with '/'."
        elif self.match_type in (Match.ROUTE, Match.TAG) and not self.pattern.strip():
            errors["pattern"] = "Give a route name or tag."
        if errors:
            raise ValidationError(errors)


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

    priority = models.IntegerField(default=100, help_text="Lower first; ties by name. Orders the headers.")
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
    limit = models.PositiveIntegerField(help_text="Requests allowed per period; 0 blocks every request.")
    period = models.PositiveIntegerField(default=60, help_text="Seconds (default 60).")
    burst = models.PositiveIntegerField(
        null=True, blank=True, help_text="Token bucket only: largest burst; empty means the limit."
    )
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.ENFORCE)
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
            models.CheckConstraint(condition=models.Q(period__gte=1), name="ratelimit_period_positive"),
            models.CheckConstraint(condition=models.Q(limit__lte=MAX_LIMIT), name="ratelimit_limit_bounded"),
            models.CheckConstraint(
                condition=models.Q(burst__isnull=True) | models.Q(burst__gte=1),
                name="ratelimit_burst_positive",
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

    def clean(self) -> None:
        super().clean()
        errors: dict[str, str] = {}
        if self.match_type == Match.CODE:
            errors["match_type"] = "Rate limits apply to requests: choose a path, route or tag match."
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
    limit = models.PositiveIntegerField(help_text="Requests per the policy's period for this key; 0 blocks it.")
    note = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["policy", "key_value"], name="ratelimit_override_unique"),
            models.CheckConstraint(condition=models.Q(limit__lte=MAX_LIMIT), name="ratelimit_override_bounded"),
        ]

    def __str__(self) -> str:
        return f"{self.policy.name}: {self.key_value} → {self.limit}"

    def save(self, *args: object, **kwargs: object) -> None:
        self._hash_header_value()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
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
    """Return the HTTP statuses in "500-599,429" style text; raise ValueError on bad input."""
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
        if not 100 <= first <= last <= 599:
            raise ValueError(f"{part!r} is outside 100-599.")
        statuses.update(range(first, last + 1))
    return frozenset(statuses)


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
        help_text='Response statuses that count as failures, e.g. "500-599" (default) or "500-599,429". '
        "Unhandled exceptions always count.",
    )
    slow_call_ms = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="A call slower than this many milliseconds counts as a failure; empty: off.",
    )
    failure_threshold = models.PositiveIntegerField(
        default=5, help_text="Consecutive failures that trip the breaker (default 5; 0 turns the rule off)."
    )
    failure_rate = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=0,
        help_text="Failure percentage over the window that trips it (0-100; default 0 = off).",
    )
    window_kind = models.CharField(max_length=8, choices=WindowKind.choices, default=WindowKind.COUNT)
    window_size = models.PositiveIntegerField(default=20, help_text="Calls or seconds in the window (default 20).")
    minimum_calls = models.PositiveIntegerField(
        default=10, help_text="The rate rule applies once the window holds this many calls (default 10)."
    )
    open_seconds = models.PositiveIntegerField(
        default=30, help_text="Seconds the breaker stays open before trial calls (default 30)."
    )
    half_open_max_calls = models.PositiveIntegerField(
        default=1,
        help_text="Trial calls admitted across all workers when half-open (default 1): "
        "all must succeed to close; any failure re-opens.",
    )
    fallback = models.CharField(max_length=8, choices=Fallback.choices, default=Fallback.ERROR)
    stale_max_age = models.PositiveIntegerField(
        default=300,
        help_text="Stale fallback: keep the last good GET response this many seconds (default 300).",
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
            models.CheckConstraint(condition=models.Q(window_size__gte=1), name="breaker_window_positive"),
            models.CheckConstraint(condition=models.Q(open_seconds__gte=1), name="breaker_open_positive"),
            models.CheckConstraint(condition=models.Q(half_open_max_calls__gte=1), name="breaker_half_open_positive"),
            models.CheckConstraint(
                condition=models.Q(window_kind__in=["count", "time"]), name="breaker_window_kind_valid"
            ),
            models.CheckConstraint(condition=models.Q(fallback__in=["error", "stale"]), name="breaker_fallback_valid"),
        ]

    def clean(self) -> None:
        super().clean()
        errors: dict[str, str] = {}
        try:
            if not parse_status_set(self.failure_statuses or ""):
                errors["failure_statuses"] = "Give at least one status."
        except ValueError as e:
            errors["failure_statuses"] = str(e)
        if self.failure_threshold == 0 and not self.failure_rate:
            errors["failure_threshold"] = "Set a consecutive-failure threshold or a failure rate."
        if self.window_kind == self.WindowKind.TIME and self.window_size > 3600:
            errors["window_size"] = "A time window is at most 3600 seconds."
        if self.half_open_max_calls > 1000:
            errors["half_open_max_calls"] = "At most 1000."
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
        cls.objects.bulk_create([cls(pk=1, version=0)], ignore_conflicts=True)
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
