"""Bound every number staff can save; clamp rows already out of bounds before the constraints are added.

The bounds are written here as they were when this migration was made (resilience/engine/limiter.py and
resilience/engine/breaker.py hold the live ones), so replaying it later gives the same result. Rows are
only ever clamped to the nearest value the engine accepts, never deleted.
"""

import re

import django.core.validators
import django.db.models.expressions
import django.db.models.functions.comparison
import django.db.models.lookups
from django.db import migrations, models
from django.utils.text import slugify

MAX_LIMIT = 1_000_000_000
MAX_PERIOD = 366 * 86_400
SLIDING_LOG_MAX = 100_000
MAX_CAPACITY_SECONDS = MAX_PERIOD
MIN_PRIORITY, MAX_PRIORITY = -10_000, 10_000
MAX_FAILURE_THRESHOLD = 10_000
MAX_COUNT_WINDOW = 10_000
MAX_TIME_WINDOW = 3_600
MAX_MINIMUM_CALLS = 1_000_000
MAX_OPEN_SECONDS = 86_400
MAX_HALF_OPEN_CALLS = 1_000
MAX_SLOW_CALL_MS = 600_000
MAX_STALE_MAX_AGE = 86_400
SLUG = re.compile(r"[-a-zA-Z0-9_]+")


def _clamp(value, low, high):
    return max(low, min(high, value))


def _slug_names(model):
    """Give every row a name that is a slug (names go into HTTP headers and Redis keys), keeping names unique."""
    taken = set(model.objects.values_list("name", flat=True))
    for row in model.objects.all().order_by("pk"):
        if SLUG.fullmatch(row.name):
            continue
        base = (slugify(row.name) or "policy")[:50]
        name = base if base not in taken else f"{base}-{row.pk}"
        taken.add(name)
        model.objects.filter(pk=row.pk).update(name=name)


def _error_statuses(text):
    """Return the "429,500-599" form of the error statuses (400-599) in text, or the default when none."""
    statuses = set()
    for part in (p.strip() for p in text.split(",")):
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            continue
        statuses.update(range(max(first, 400), min(last, 599) + 1))
    runs = []
    for status in sorted(statuses):
        if runs and status == runs[-1][1] + 1:
            runs[-1][1] = status
        else:
            runs.append([status, status])
    formatted = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return formatted if formatted and len(formatted) <= 100 else "500-599"


def clamp(apps, schema_editor):
    """Move every out-of-bounds value to the nearest one the engine accepts."""
    RateLimitPolicy = apps.get_model("resilience", "RateLimitPolicy")
    RateLimitOverride = apps.get_model("resilience", "RateLimitOverride")
    CircuitBreakerPolicy = apps.get_model("resilience", "CircuitBreakerPolicy")
    _slug_names(RateLimitPolicy)
    _slug_names(CircuitBreakerPolicy)
    for p in RateLimitPolicy.objects.all():
        sliding = p.algorithm == "sliding_window"
        limit = _clamp(p.limit, 0, SLIDING_LOG_MAX if sliding else MAX_LIMIT)
        period = _clamp(p.period, 1, MAX_PERIOD)
        burst = p.burst
        if burst is not None:
            if p.algorithm != "token_bucket":
                burst = None  # only a token bucket has one: the others never read it
            else:
                burst = _clamp(burst, 1, MAX_LIMIT)
                if limit > 0:
                    # burst * period / limit <= MAX_CAPACITY_SECONDS
                    burst = min(burst, max(1, MAX_CAPACITY_SECONDS * limit // period))
        priority = _clamp(p.priority, MIN_PRIORITY, MAX_PRIORITY)
        RateLimitPolicy.objects.filter(pk=p.pk).update(limit=limit, period=period, burst=burst, priority=priority)
        if sliding:
            RateLimitOverride.objects.filter(policy_id=p.pk, limit__gt=SLIDING_LOG_MAX).update(limit=SLIDING_LOG_MAX)
    RateLimitOverride.objects.filter(limit__gt=MAX_LIMIT).update(limit=MAX_LIMIT)
    for b in CircuitBreakerPolicy.objects.all():
        window_max = MAX_TIME_WINDOW if b.window_kind == "time" else MAX_COUNT_WINDOW
        CircuitBreakerPolicy.objects.filter(pk=b.pk).update(
            failure_statuses=_error_statuses(b.failure_statuses),
            # 0 meant off, as empty does.
            slow_call_ms=_clamp(b.slow_call_ms, 1, MAX_SLOW_CALL_MS) if b.slow_call_ms else None,
            failure_threshold=_clamp(b.failure_threshold, 0, MAX_FAILURE_THRESHOLD),
            window_size=_clamp(b.window_size, 1, window_max),
            minimum_calls=_clamp(b.minimum_calls, 0, MAX_MINIMUM_CALLS),
            open_seconds=_clamp(b.open_seconds, 1, MAX_OPEN_SECONDS),
            half_open_max_calls=_clamp(b.half_open_max_calls, 1, MAX_HALF_OPEN_CALLS),
            stale_max_age=_clamp(b.stale_max_age, 1, MAX_STALE_MAX_AGE),
        )


class Migration(migrations.Migration):

    dependencies = [
        ('resilience', '0005_search_ip_token_bucket'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='circuitbreakerpolicy',
            name='breaker_window_positive',
        ),
        migrations.RemoveConstraint(
            model_name='circuitbreakerpolicy',
            name='breaker_open_positive',
        ),
        migrations.RemoveConstraint(
            model_name='circuitbreakerpolicy',
            name='breaker_half_open_positive',
        ),
        migrations.RemoveConstraint(
            model_name='ratelimitpolicy',
            name='ratelimit_period_positive',
        ),
        migrations.RemoveConstraint(
            model_name='ratelimitpolicy',
            name='ratelimit_burst_positive',
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='failure_rate',
            field=models.DecimalField(decimal_places=2, default=0, help_text='Failure percentage over the window that trips it (0-100; default 0 = off).', max_digits=5, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(100)]),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='failure_statuses',
            field=models.CharField(default='500-599', help_text='Response statuses that count as failures, e.g. "500-599" (default) or "429,500-599"; error statuses only (400-599). Unhandled exceptions always count.', max_length=100),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='failure_threshold',
            field=models.PositiveIntegerField(default=5, help_text='Consecutive failures that trip the breaker, 0 to 10,000 (default 5; 0 turns the rule off).', validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(10000)]),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='fallback',
            field=models.CharField(choices=[('error', '503 error'), ('stale', 'Last good response (GET), else 503')], default='error', help_text='While open: error (default) answers 503; stale serves the last good GET response when kept.', max_length=8),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='half_open_max_calls',
            field=models.PositiveIntegerField(default=1, help_text='Trial calls admitted across all workers when half-open, 1 to 1,000 (default 1): all must succeed to close; any failure re-opens.', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(1000)]),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='match_type',
            field=models.CharField(choices=[('prefix', 'Path prefix'), ('regex', 'Path regular expression'), ('route', 'URL route name'), ('tag', 'View tag'), ('code', 'Only where code uses it by name')], default='prefix', help_text="prefix (default): path starts with pattern; regex: an RE2 regular expression matched at the start of the path (no backreferences or lookaround; a path over 2048 characters counts as matching); route: the URL pattern's name; tag: a tag the view declares in resilience_tags.", max_length=8),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='minimum_calls',
            field=models.PositiveIntegerField(default=10, help_text='The rate rule applies once the window holds this many calls, 0 to 1,000,000 (default 10).', validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1000000)]),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='open_seconds',
            field=models.PositiveIntegerField(default=30, help_text='Seconds the breaker stays open before trial calls, 1 to 86,400 (a day; default 30).', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(86400)]),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='slow_call_ms',
            field=models.PositiveIntegerField(blank=True, help_text='A call slower than this many milliseconds (1 to 600,000) counts as a failure; empty: off.', null=True, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(600000)]),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='stale_max_age',
            field=models.PositiveIntegerField(default=300, help_text='Stale fallback: keep the last good GET response this many seconds, 1 to 86,400 (a day; default 300).', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(86400)]),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='window_kind',
            field=models.CharField(choices=[('count', 'Last N calls'), ('time', 'Last N seconds')], default='count', help_text='count (default): the last N calls; time: the last N seconds.', max_length=8),
        ),
        migrations.AlterField(
            model_name='circuitbreakerpolicy',
            name='window_size',
            field=models.PositiveIntegerField(default=20, help_text='Calls (1 to 10,000) or seconds (1 to 3,600) in the window (default 20).', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(10000)]),
        ),
        migrations.AlterField(
            model_name='ratelimitoverride',
            name='limit',
            field=models.PositiveIntegerField(help_text="Requests per the policy's period for this key, 0 to 1,000,000,000 (a sliding window: at most 100,000); 0 blocks it.", validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1000000000)]),
        ),
        migrations.AlterField(
            model_name='ratelimitpolicy',
            name='burst',
            field=models.PositiveIntegerField(blank=True, help_text='Token bucket only: largest burst, 1 to 1,000,000,000, that refills within 31,622,400 s (burst × period / limit); empty means the limit.', null=True, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(1000000000)]),
        ),
        migrations.AlterField(
            model_name='ratelimitpolicy',
            name='limit',
            field=models.PositiveIntegerField(help_text='Requests allowed per period, 0 to 1,000,000,000 (a sliding window: at most 100,000); 0 blocks every request.', validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1000000000)]),
        ),
        migrations.AlterField(
            model_name='ratelimitpolicy',
            name='match_type',
            field=models.CharField(choices=[('prefix', 'Path prefix'), ('regex', 'Path regular expression'), ('route', 'URL route name'), ('tag', 'View tag'), ('code', 'Only where code uses it by name')], default='prefix', help_text="prefix (default): path starts with pattern; regex: an RE2 regular expression matched at the start of the path (no backreferences or lookaround; a path over 2048 characters counts as matching); route: the URL pattern's name; tag: a tag the view declares in resilience_tags.", max_length=8),
        ),
        migrations.AlterField(
            model_name='ratelimitpolicy',
            name='mode',
            field=models.CharField(choices=[('enforce', 'Enforce'), ('dry_run', 'Dry run (count, never block)')], default='enforce', help_text='enforce (default): refuse with 429; dry run: count what would be refused, refuse nothing.', max_length=8),
        ),
        migrations.AlterField(
            model_name='ratelimitpolicy',
            name='period',
            field=models.PositiveIntegerField(default=60, help_text='Seconds, 1 to 31,622,400 (a leap year; default 60).', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(31622400)]),
        ),
        migrations.AlterField(
            model_name='ratelimitpolicy',
            name='priority',
            field=models.IntegerField(default=100, help_text='Lower first; ties by name. Orders the headers (-10000 to 10000; default 100).', validators=[django.core.validators.MinValueValidator(-10000), django.core.validators.MaxValueValidator(10000)]),
        ),
        # Before the constraints: PostgreSQL checks existing rows when one is added.
        migrations.RunPython(clamp, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('window_kind', 'count'), ('window_size__gte', 1), ('window_size__lte', 10000)), models.Q(('window_kind', 'time'), ('window_size__gte', 1), ('window_size__lte', 3600)), _connector='OR'), name='breaker_window_bounded'),
        ),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('open_seconds__gte', 1), ('open_seconds__lte', 86400)), name='breaker_open_bounded'),
        ),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('half_open_max_calls__gte', 1), ('half_open_max_calls__lte', 1000)), name='breaker_half_open_bounded'),
        ),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('failure_threshold__lte', 10000)), name='breaker_threshold_bounded'),
        ),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('minimum_calls__lte', 1000000)), name='breaker_minimum_calls_bounded'),
        ),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('slow_call_ms__isnull', True), models.Q(('slow_call_ms__gte', 1), ('slow_call_ms__lte', 600000)), _connector='OR'), name='breaker_slow_call_bounded'),
        ),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('stale_max_age__gte', 1), ('stale_max_age__lte', 86400)), name='breaker_stale_max_age_bounded'),
        ),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('failure_statuses__regex', '^[45][0-9][0-9](-[45][0-9][0-9])?(,[45][0-9][0-9](-[45][0-9][0-9])?)*\\Z')), name='breaker_failure_statuses_errors'),
        ),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('name__regex', '^[-a-zA-Z0-9_]+\\Z')), name='breaker_name_slug'),
        ),
        migrations.AddConstraint(
            model_name='circuitbreakerpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('match_type__in', ['prefix', 'regex', 'route', 'tag', 'code'])), name='breaker_match_type_valid'),
        ),
        migrations.AddConstraint(
            model_name='ratelimitpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('period__gte', 1), ('period__lte', 31622400)), name='ratelimit_period_bounded'),
        ),
        migrations.AddConstraint(
            model_name='ratelimitpolicy',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('algorithm', 'sliding_window'), _negated=True), ('limit__lte', 100000), _connector='OR'), name='ratelimit_sliding_limit_bounded'),
        ),
        migrations.AddConstraint(
            model_name='ratelimitpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('burst__isnull', True), models.Q(('algorithm', 'token_bucket'), ('burst__gte', 1), ('burst__lte', 1000000000)), _connector='OR'), name='ratelimit_burst_bounded'),
        ),
        migrations.AddConstraint(
            model_name='ratelimitpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('burst__isnull', True), ('limit', 0), django.db.models.lookups.LessThanOrEqual(django.db.models.expressions.CombinedExpression(django.db.models.functions.comparison.Cast('burst', models.BigIntegerField()), '*', models.F('period')), django.db.models.expressions.CombinedExpression(django.db.models.functions.comparison.Cast('limit', models.BigIntegerField()), '*', models.Value(31622400))), _connector='OR'), name='ratelimit_burst_refills_in_time'),
        ),
        migrations.AddConstraint(
            model_name='ratelimitpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('priority__gte', -10000), ('priority__lte', 10000)), name='ratelimit_priority_bounded'),
        ),
        migrations.AddConstraint(
            model_name='ratelimitpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('name__regex', '^[-a-zA-Z0-9_]+\\Z')), name='ratelimit_name_slug'),
        ),
        migrations.AddConstraint(
            model_name='ratelimitpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('match_type__in', ['prefix', 'regex', 'route', 'tag', 'code'])), name='ratelimit_match_type_valid'),
        ),
        migrations.AddConstraint(
            model_name='ratelimitpolicy',
            constraint=models.CheckConstraint(condition=models.Q(('on_store_failure__in', ['allow', 'deny'])), name='ratelimit_on_store_failure_valid'),
        ),
    ]
