"""The default bulkhead: book search, at most twice a worker's database pool in flight across the fleet.

Search is the one slow read a client can make at will; without a bound, a pile of slow searches
holds every worker thread and every pooled connection while each is within its rate limit. Twice
DB_POOL_MAX (16 with the default pool of 8) as read when the migration ran; staff tune it in the
admin. A row named "search" that staff made themselves is left as it is.
"""

from django.conf import settings
from django.db import migrations


def _pool_max() -> int:
    try:
        return int(settings.DATABASES["default"].get("OPTIONS", {}).get("pool", {}).get("max_size", 8))
    except (AttributeError, TypeError, ValueError):
        return 8


def defaults():
    return [
        dict(
            name="search",
            match_type="tag",
            pattern="search",
            methods="",
            key="global",
            max_in_flight=2 * _pool_max(),
            max_wait_ms=200,
            lease_seconds=30,
            mode="enforce",
            on_store_failure="allow",
        ),
    ]


def create(apps, schema_editor):
    Policy = apps.get_model("resilience", "ConcurrencyPolicy")
    for fields in defaults():
        Policy.objects.get_or_create(name=fields["name"], defaults=fields)


def delete(apps, schema_editor):
    apps.get_model("resilience", "ConcurrencyPolicy").objects.filter(name__in=[d["name"] for d in defaults()]).delete()


class Migration(migrations.Migration):
    dependencies = [("resilience", "0010_concurrency_policies")]
    operations = [migrations.RunPython(create, delete)]
