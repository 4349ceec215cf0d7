from __future__ import annotations

from django.urls import path

from accounts import api

urlpatterns = [
    path("accounts/register", api.RegisterApi.as_view(), name="accounts-register"),
    path("accounts/token", api.TokenApi.as_view(), name="accounts-token"),
    path("accounts/logout", api.LogoutApi.as_view(), name="accounts-logout"),
    path("accounts/logout-all", api.LogoutAllApi.as_view(), name="accounts-logout-all"),
    path("accounts/me", api.MeApi.as_view(), name="accounts-me"),
]
