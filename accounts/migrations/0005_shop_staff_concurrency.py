"""Shop staff tune concurrency policies (bulkheads) as they tune rate limits and breakers."""

from django.db import migrations

GROUP = "Shop staff"
CODENAMES = [
    "view_concurrencypolicy",
    "add_concurrencypolicy",
    "change_concurrencypolicy",
    "delete_concurrencypolicy",
]


def grant(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are otherwise made after the last migration: make them now, so the group can hold them.
    app_config = apps.get_app_config("resilience")
    models_module = getattr(app_config, "models_module", None)
    app_config.models_module = models_module or True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = models_module

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    found = list(Permission.objects.filter(content_type__app_label="resilience", codename__in=CODENAMES))
    missing = set(CODENAMES) - {permission.codename for permission in found}
    if missing:
        raise RuntimeError(f"permissions not found for resilience: {sorted(missing)}")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(*found)


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group in Group.objects.filter(name=GROUP):
        group.permissions.remove(
            *Permission.objects.filter(content_type__app_label="resilience", codename__in=CODENAMES)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_username_skeleton"),
        ("resilience", "0010_concurrency_policies"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
