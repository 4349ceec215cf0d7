"""Carry DRF's plain-text tokens over to knox's hashed, expiring ones, then drop DRF's table.

knox finds a token by its first 15 characters (token_key) and checks the SHA-512 digest of the
whole token, so a 40-character DRF key hashed here keeps authenticating as `Token <key>` with no
client change. Each carried-over token expires one TOKEN_TTL after this migration runs (clients
then sign in again, as with any token); nobody is signed out by the upgrade itself. The plain
keys are then dropped with DRF's table, and the `authtoken` app's migration records with it, so
re-adding rest_framework.authtoken later would create its table afresh.

Going back does not restore DRF tokens (the keys are gone by design): clients sign in again.
"""

from django.db import migrations
from django.utils import timezone

LEGACY_TABLE = "authtoken_token"
BATCH = 1000


def carry_over(apps, schema_editor):
    from knox.crypto import hash_token
    from knox.settings import knox_settings

    connection = schema_editor.connection
    if LEGACY_TABLE not in connection.introspection.table_names():
        return  # a new database: DRF's token app never ran here
    qn = connection.ops.quote_name
    knox_table = apps.get_model("knox", "AuthToken")._meta.db_table
    expiry = timezone.now() + knox_settings.TOKEN_TTL
    insert = (
        f"INSERT INTO {qn(knox_table)} ({qn('digest')}, {qn('token_key')}, {qn('user_id')}, "
        f"{qn('created')}, {qn('expiry')}) VALUES (%s, %s, %s, %s, %s)"
    )
    with connection.cursor() as read:
        read.execute(f"SELECT {qn('key')}, {qn('user_id')}, {qn('created')} FROM {qn(LEGACY_TABLE)}")
        while rows := read.fetchmany(BATCH):
            with connection.cursor() as write:
                write.executemany(
                    insert, [(hash_token(key), key[:15], user_id, created, expiry) for key, user_id, created in rows]
                )
    schema_editor.execute(f"DROP TABLE {qn(LEGACY_TABLE)}")
    schema_editor.execute(f"DELETE FROM {qn('django_migrations')} WHERE {qn('app')} = %s", ["authtoken"])


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("knox", "0009_extend_authtoken_field"),
    ]

    operations = [migrations.RunPython(carry_over, migrations.RunPython.noop, elidable=False)]
