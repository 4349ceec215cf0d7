from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from orders.models import Order, OrderLine


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    fields = ["book", "quantity", "unit_price"]
    readonly_fields = ["book", "quantity", "unit_price"]  # money and stock history are not edited by hand
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "status", "total", "created_at", "cancelled_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["id", "user__username", "user__email", "lines__book__isbn", "lines__book__title"]
    list_select_related = ["user"]
    readonly_fields = ["user", "status", "total", "created_at", "cancelled_at"]
    inlines = [OrderLineInline]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # orders are placed through the API so stock is decremented with them
