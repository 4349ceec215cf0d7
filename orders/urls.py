from __future__ import annotations

from django.urls import path

from orders import api

urlpatterns = [
    path("orders", api.OrderListApi.as_view(), name="orders-list"),
    path("orders/<int:pk>", api.OrderDetailApi.as_view(), name="orders-detail"),
    path("orders/<int:pk>/cancel", api.OrderCancelApi.as_view(), name="orders-cancel"),
]
