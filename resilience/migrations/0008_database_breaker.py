"""The database breaker's policy row, so staff see it in the admin and can tune it there.

The breaker itself is built in (resilience/db/guard.py): it guards every PostgreSQL connection
with these same numbers when this row cannot be read (PostgreSQL is down) or is disabled. Match
type "code": it guards connections, not requests, so no route matches it. A row named "database"
that staff made themselves is left as it is.
"""

from django.db import migrations

DEFAULTS = [
    # Three connection failures in a row (refused, timed out, or lost under a query) open it for
    # one second; then one trial connection decides, for every worker of every instance.
    dict(
        name="database",
        match_type="code",
        pattern="database",
        failure_statuses="500-599",
        slow_call_ms=None,
        failure_threshold=3,
        failure_rate=0,
        window_kind="count",
        window_size=20,
        minimum_calls=10,
        open_seconds=1,
        half_open_max_calls=1,
        fallback="error",
    ),
]


def create(apps, schema_editor):
    Policy = apps.get_model("resilience", "CircuitBreakerPolicy")
    for fields in DEFAULTS:
        Policy.objects.get_or_create(name=fields["name"], defaults=fields)


def delete(apps, schema_editor):
    apps.get_model("resilience", "CircuitBreakerPolicy").objects.filter(name__in=[d["name"] for d in DEFAULTS]).delete()


class Migration(migrations.Migration):
    dependencies = [("resilience", "0007_policy_version")]
    operations = [migrations.RunPython(create, delete)]
