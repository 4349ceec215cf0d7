"""Roles mean permissions: staff can work in the admin, customers cannot, in both directions."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.db import connection
from django.forms import MultiWidget
from django.http import HttpResponse
from django.test import Client

from accounts.models import SHOP_STAFF_GROUP, User
from orders.models import Order
from tests.conftest import make_policy

PASSWORD = "correct-horse-battery"
POLICIES = "/admin/resilience/ratelimitpolicy/"
MIGRATION = importlib.import_module("accounts.migrations.0003_shop_staff_group")

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def shop_staff_group(db: None) -> Group:
    """The group as migration 0003 makes it (a transactional test before this one flushed it)."""
    with connection.schema_editor() as editor:
        MIGRATION.create_group(apps, editor)
    return Group.objects.get(name=SHOP_STAFF_GROUP)


@pytest.fixture
def root(make_user: Callable[..., User]) -> Client:
    """A superuser signed in to the admin."""
    user = make_user(username="root")
    User.objects.filter(pk=user.pk).update(is_superuser=True, is_staff=True)
    client = Client()
    assert client.login(username="root", password=PASSWORD)
    return client


def _signed_in(user: User) -> Client:
    """Sign in through the login form's backend, with the password, as a person would."""
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def _value(value: Any) -> str:
    return str(getattr(value, "pk", value))


def _form_data(page: HttpResponse) -> dict[str, Any]:
    """Return the POST data that submits an admin change page's forms unchanged."""
    form = page.context["adminform"].form
    data: dict[str, Any] = {}
    forms = [form]
    for inline in page.context["inline_admin_formsets"]:
        management = inline.formset.management_form
        data.update({management.add_prefix(name): value for name, value in management.initial.items()})
        forms += inline.formset.forms
    for each in forms:
        for name, field in each.fields.items():
            if field.disabled:
                continue
            key, value = each.add_prefix(name), each[name].value()
            if isinstance(field.widget, MultiWidget):
                for index, part in enumerate(field.widget.decompress(value)):
                    data[f"{key}_{index}"] = "" if part is None else str(part)
            elif isinstance(value, bool):
                if value:
                    data[key] = "on"
            elif isinstance(value, list | tuple):
                data[key] = [_value(item) for item in value]
            elif value is not None:
                data[key] = _value(value)
    return data


def _admin_edit(client: Client, url: str, **changes: Any) -> HttpResponse:
    page = client.get(url)
    assert page.status_code == 200, page.content
    response = client.post(url, {**_form_data(page), **changes})
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    return response


def _set_role(root: Client, user: User, role: str) -> None:
    _admin_edit(root, f"/admin/accounts/user/{user.pk}/change/", role=role)


# --- in the admin, with a real signed-in member of staff ------------------------------------------


def test_new_staff_member_can_open_and_edit_rate_limit_policies(root: Client, customer: User) -> None:
    policy = make_policy(name="books", limit=100, period=60)
    _set_role(root, customer, User.Role.STAFF)
    customer.refresh_from_db()
    assert customer.is_staff
    assert customer.groups.filter(name=SHOP_STAFF_GROUP).exists()
    staff = _signed_in(customer)

    assert staff.get(POLICIES).status_code == 200
    _admin_edit(staff, f"{POLICIES}{policy.pk}/change/", limit=250)

    policy.refresh_from_db()
    assert policy.limit == 250


def test_staff_created_as_staff_can_open_the_admin_too(make_user: Callable[..., User]) -> None:
    staff = _signed_in(make_user(role=User.Role.STAFF))

    assert staff.get(POLICIES).status_code == 200
    assert staff.get("/admin/catalog/book/").status_code == 200
    assert staff.get("/admin/resilience/circuitbreakerpolicy/").status_code == 200
    assert staff.get("/admin/orders/order/").status_code == 200


def test_demoted_staff_member_loses_the_admin(root: Client, staff: User) -> None:
    signed_in = _signed_in(staff)
    assert signed_in.get(POLICIES).status_code == 200

    _set_role(root, staff, User.Role.CUSTOMER)

    response = signed_in.get(POLICIES)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    staff.refresh_from_db()
    assert not staff.is_staff
    assert not staff.groups.filter(name=SHOP_STAFF_GROUP).exists()
    assert not staff.has_perm("resilience.change_ratelimitpolicy")


def test_admin_cannot_keep_a_customer_in_the_staff_group(root: Client, customer: User, shop_staff_group: Group) -> None:
    _admin_edit(root, f"/admin/accounts/user/{customer.pk}/change/", groups=[shop_staff_group.pk])

    customer.refresh_from_db()
    assert not customer.groups.exists()
    assert not customer.is_staff


def test_staff_may_not_change_accounts_or_delete_orders(
    staff: User, customer: User, make_book: Callable[..., Any]
) -> None:
    from orders.services import LineRequest, order_place

    order = order_place(user=customer, lines=[LineRequest(book_id=make_book().pk, quantity=1)]).order
    signed_in = _signed_in(staff)

    assert signed_in.get(f"/admin/accounts/user/{customer.pk}/change/").status_code == 200  # view only
    promoted = signed_in.post(f"/admin/accounts/user/{customer.pk}/change/", {"role": "staff"})
    assert promoted.status_code == 403
    assert signed_in.get(f"/admin/accounts/user/{customer.pk}/password/").status_code == 403
    assert signed_in.post(f"/admin/orders/order/{order.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Order.objects.filter(pk=order.pk).exists()
    customer.refresh_from_db()
    assert customer.role == User.Role.CUSTOMER


def test_superuser_keeps_everything_whatever_the_role(root: Client, make_user: Callable[..., User]) -> None:
    boss = make_user(role=User.Role.STAFF)
    User.objects.filter(pk=boss.pk).update(is_superuser=True)
    _set_role(root, boss, User.Role.CUSTOMER)

    boss.refresh_from_db()
    assert boss.is_staff
    assert boss.is_superuser
    assert _signed_in(boss).get(POLICIES).status_code == 200


# --- the group and the role rule -------------------------------------------------------------------


def test_shop_staff_group_holds_exactly_the_listed_permissions(shop_staff_group: Group) -> None:
    granted = {f"{p.content_type.app_label}.{p.codename}" for p in shop_staff_group.permissions.all()}

    assert granted == {
        *(f"catalog.{a}_{m}" for a in ("view", "add", "change", "delete") for m in ("author", "book")),
        "orders.view_order",
        "orders.change_order",
        "orders.view_orderline",
        *(
            f"resilience.{a}_{m}"
            for a in ("view", "add", "change", "delete")
            for m in ("ratelimitpolicy", "ratelimitoverride", "circuitbreakerpolicy")
        ),
        "accounts.view_user",
    }


@pytest.mark.parametrize("update_fields", [None, ["role"]])
def test_role_change_sets_admin_flag_and_group_both_ways(customer: User, update_fields: list[str] | None) -> None:
    customer.role = User.Role.STAFF
    customer.save(update_fields=update_fields)
    customer.refresh_from_db()
    assert customer.is_staff
    assert customer.has_perm("resilience.change_ratelimitpolicy")

    customer = User.objects.get(pk=customer.pk)  # permissions are cached per instance
    customer.role = User.Role.CUSTOMER
    customer.save(update_fields=update_fields)
    customer = User.objects.get(pk=customer.pk)
    assert not customer.is_staff
    assert not customer.groups.exists()
    assert not customer.has_perm("resilience.change_ratelimitpolicy")


def test_migration_brings_existing_users_in_line(make_user: Callable[..., User], shop_staff_group: Group) -> None:
    old_staff = make_user(role=User.Role.STAFF)
    demoted = make_user()
    boss = make_user()
    # Rows as the code before this migration left them: staff without the group, a demoted
    # customer still flagged, a superuser customer.
    old_staff.groups.clear()
    User.objects.filter(pk=demoted.pk).update(is_staff=True)
    User.objects.filter(pk=boss.pk).update(is_staff=True, is_superuser=True)

    with connection.schema_editor() as editor:
        MIGRATION.create_group(apps, editor)

    flags = dict(User.objects.values_list("pk", "is_staff"))
    assert (flags[old_staff.pk], flags[demoted.pk], flags[boss.pk]) == (True, False, True)
    assert list(shop_staff_group.user_set.values_list("pk", flat=True)) == [old_staff.pk]
