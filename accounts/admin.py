from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from accounts.models import User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["username", "email", "role", "status", "is_active", "date_joined", "last_login"]
    list_filter = ["role", "status", "is_active", "is_superuser"]
    search_fields = ["username", "email", "first_name", "last_name"]
    ordering = ["-date_joined"]
    fieldsets = (*BaseUserAdmin.fieldsets, ("Shop", {"fields": ("role", "status")}))
    add_fieldsets = (*BaseUserAdmin.add_fieldsets, ("Shop", {"fields": ("email", "role", "status")}))
