"""Sign-in and registration limits: per account as well as per address, and registration per address.

A password guess costs us an Argon2 hash; these bound how many guesses one account can take, from
however many addresses (an IPv6 /64 is cheap to come by), and how fast one address can probe which
usernames and emails are registered. Each attempt is counted, right or wrong, before any hash.
Policies of match type "code" are asked by name in code (pattern): limit("admin-login", key=username).
A row of the same name that staff made themselves is left as it is.
"""

from django.db import migrations

DEFAULTS = [
    # 10 token sign-ins per 15 minutes per account, from any number of addresses: ample for a
    # person with typos, about 1000 guesses a day against one account. Sliding window: no boundary
    # at which 20 fit in a few seconds. Per-IP counting stays with login-ip (middleware).
    dict(name="login-user", priority=6, match_type="code", pattern="login-user", key="user",
         algorithm="sliding_window", limit=10, period=900),
    # The admin's sign-in, per address: 20 per 10 minutes with at most 5 at once (as login-ip, with
    # a little more room for a shared office address).
    dict(name="admin-login-ip", priority=5, match_type="code", pattern="admin-login", key="ip",
         algorithm="token_bucket", limit=20, period=600, burst=5),
    # The admin's sign-in, per username: 10 per 15 minutes, as the token sign-in.
    dict(name="admin-login-user", priority=6, match_type="code", pattern="admin-login", key="user",
         algorithm="sliding_window", limit=10, period=900),
    # 10 registrations per hour per address: a household or office registering together fits; at
    # most 10 probes an hour of which names are taken (the answer is the same either way too).
    dict(name="register-ip", priority=5, methods="POST", match_type="prefix", pattern="/api/accounts/register",
         key="ip", algorithm="sliding_window", limit=10, period=3600),
]


def create(apps, schema_editor):
    Policy = apps.get_model("resilience", "RateLimitPolicy")
    for fields in DEFAULTS:
        Policy.objects.get_or_create(name=fields["name"], defaults=fields)


def delete(apps, schema_editor):
    apps.get_model("resilience", "RateLimitPolicy").objects.filter(name__in=[d["name"] for d in DEFAULTS]).delete()


class Migration(migrations.Migration):
    dependencies = [("resilience", "0008_database_breaker")]
    operations = [migrations.RunPython(create, delete)]
