"""The "Shop staff" group: what the staff role lets a member of staff do in the admin.

A user whose role is staff is in this group and has the admin flag; a customer is in neither
(superusers keep theirs and every permission). Existing users are brought in line here: staff
join the group and get the admin flag, customers who are not superusers lose the admin flag.

Running it again (tests do, after a flush) puts the group back to exactly this list.
"""

from django.db import migrations

GROUP = "Shop staff"

PERMISSIONS = {
    # The catalogue: staff keep it, in the admin as through the API.
    "catalog": [
        "view_author", "add_author", "change_author", "delete_author",
        "view_book", "add_book", "change_book", "delete_book",
    ],
    # Orders: staff look them up and handle them (lines are read-only); nobody deletes one, since
    # an order is the history of stock and money.
    "orders": ["view_order", "change_order", "view_orderline"],
    # Resilience: staff tune rate limits, their per-key overrides and circuit breakers live.
    "resilience": [
        "view_ratelimitpolicy", "add_ratelimitpolicy", "change_ratelimitpolicy", "delete_ratelimitpolicy",
        "view_ratelimitoverride", "add_ratelimitoverride", "change_ratelimitoverride", "delete_ratelimitoverride",
        "view_circuitbreakerpolicy", "add_circuitbreakerpolicy", "change_circuitbreakerpolicy",
        "delete_circuitbreakerpolicy",
    ],
    # Accounts: staff may look a customer up (behind an order); changing accounts (roles, passwords,
    # suspension) stays with superusers, or staff could promote themselves.
    "accounts": ["view_user"],
}


def create_group(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are otherwise made after the last migration: make them now, so the group can hold them.
    for app_config in apps.get_app_configs():
        models_module = getattr(app_config, "models_module", None)
        app_config.models_module = models_module or True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = models_module

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    User = apps.get_model("accounts", "User")
    granted = []
    for app_label, codenames in PERMISSIONS.items():
        found = list(Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames))
        missing = set(codenames) - {permission.codename for permission in found}
        if missing:
            raise RuntimeError(f"permissions not found for {app_label}: {sorted(missing)}")
        granted += found
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.set(granted)

    User.objects.filter(role="staff").update(is_staff=True)
    User.objects.filter(role="customer", is_superuser=False, is_staff=True).update(is_staff=False)
    Membership = User.groups.through
    Membership.objects.filter(group=group).exclude(user__role="staff").delete()
    members = set(Membership.objects.filter(group=group).values_list("user_id", flat=True))
    Membership.objects.bulk_create(
        Membership(user_id=pk, group_id=group.pk)
        for pk in User.objects.filter(role="staff").values_list("pk", flat=True)
        if pk not in members
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_knox_tokens"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("catalog", "0001_initial"),
        ("orders", "0001_initial"),
        ("resilience", "0003_circuit_breakers"),
    ]

    operations = [migrations.RunPython(create_group, migrations.RunPython.noop)]
