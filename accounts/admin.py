from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.forms import ModelForm
from django.http import HttpRequest

from accounts import services
from accounts.forms import UserCreateForm, UserEditForm
from accounts.models import User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    form = UserEditForm
    add_form = UserCreateForm
    list_display = ["username", "email", "role", "status", "is_active", "date_joined", "last_login"]
    list_filter = ["role", "status", "is_active", "is_superuser"]
    search_fields = ["username", "email", "first_name", "last_name"]
    ordering = ["-date_joined"]
    fieldsets = (*(BaseUserAdmin.fieldsets or ()), ("Shop", {"fields": ("role", "status")}))
    add_fieldsets = (*BaseUserAdmin.add_fieldsets, ("Shop", {"fields": ("email", "role", "status")}))
    # The admin flag follows the role (User.save): a checkbox that a save would undo would only mislead.
    readonly_fields = ["is_staff"]

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: list, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # The form's group list was saved after the user: put the staff group back in step with the role.
        services.user_role_sync(user=form.instance)
