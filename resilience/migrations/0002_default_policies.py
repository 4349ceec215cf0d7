"""The rate limits we start from; staff tune them in the admin afterwards."""

from django.db import migrations

DEFAULTS = [
    # 100 searches per minute per IP: generous for a person, a wall for a crawler.
    dict(name="search-ip", priority=10, match_type="prefix", pattern="/api/books/search", key="ip",
         algorithm="sliding_window", limit=100, period=60),
    # 100 order requests (list, place, cancel) per minute per IP.
    dict(name="orders-ip", priority=20, match_type="prefix", pattern="/api/orders", key="ip",
         algorithm="sliding_window", limit=100, period=60),
    # 20 login attempts per IP per 10 minutes, at most 3 at once: enough for typos, useless for
    # credential stuffing. The token bucket spreads an attacker's attempts (one every 30 s after
    # the burst): each attempt costs a password hash, a large share of a core, and 20 at once
    # would stall every other request on a small machine.
    dict(name="login-ip", priority=5, methods="POST", match_type="prefix", pattern="/api/accounts/token",
         key="ip", algorithm="token_bucket", limit=20, period=600, burst=3),
    # A ceiling for the whole API: 3000 requests per second with bursts of 6000, everyone together.
    dict(name="global-ceiling", priority=1000, match_type="prefix", pattern="/api/", key="global",
         algorithm="token_bucket", limit=3000, period=1, burst=6000),
]


def create(apps, schema_editor):
    Policy = apps.get_model("resilience", "RateLimitPolicy")
    for fields in DEFAULTS:
        Policy.objects.get_or_create(name=fields["name"], defaults=fields)


def delete(apps, schema_editor):
    apps.get_model("resilience", "RateLimitPolicy").objects.filter(name__in=[d["name"] for d in DEFAULTS]).delete()


class Migration(migrations.Migration):
    dependencies = [("resilience", "0001_initial")]
    operations = [migrations.RunPython(create, delete)]
