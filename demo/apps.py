from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Demo data across accounts, the catalogue and orders: the one app that knows them all, and none knows it."""

    name = "demo"
    verbose_name = "Demo data"
