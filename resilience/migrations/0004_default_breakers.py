"""The breaker book search starts with; staff tune it in the admin afterwards."""

from django.db import migrations

DEFAULTS = [
    # Search's dependency (the full-text query) failing or crawling: 5 failures in a row, or half
    # of the last 20 calls (after 10), or calls slower than 2 s open it for 15 s; then 2 trial
    # calls decide whether it closes. It matches the views tagged "search", so while it is open
    # the middleware refuses searches in its one admission round trip, before any view work;
    # the view's `with breaker("search")` guard defers to it for those requests.
    dict(
        name="search",
        match_type="tag",
        pattern="search",
        failure_statuses="500-599",
        slow_call_ms=2000,
        failure_threshold=5,
        failure_rate=50,
        window_kind="count",
        window_size=20,
        minimum_calls=10,
        open_seconds=15,
        half_open_max_calls=2,
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
    dependencies = [("resilience", "0003_circuit_breakers")]
    operations = [migrations.RunPython(create, delete)]
