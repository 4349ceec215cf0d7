from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from accounts.views import admin_login
from bookstore import docs, health
from resilience.ops import api as resilience_api
from resilience.ops import views as resilience_views

urlpatterns = [
    path(
        "admin/resilience/dashboard/",
        admin.site.admin_view(resilience_views.dashboard),
        name="resilience-dashboard",
    ),
    path(
        "admin/resilience/dashboard/data.json",
        admin.site.admin_view(resilience_views.dashboard_json),
        name="resilience-dashboard-data",
    ),
    # Ahead of the admin's own: the sign-in page behind the sign-in limits.
    path("admin/login/", admin_login, name="admin-login"),
    path("admin/", admin.site.urls),
    path("api/", include("accounts.urls")),
    path("api/", include("catalog.urls")),
    path("api/", include("orders.urls")),
    path("api/ops/faults/<slug:name>", resilience_api.FaultApi.as_view(), name="ops-fault"),
    path("metrics", resilience_views.metrics, name="metrics"),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("health/breakers", resilience_views.breakers_health, name="health-breakers"),
    path("health/breaker_metrics", resilience_views.breaker_metrics, name="health-breaker-metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", docs.SwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", docs.RedocView.as_view(url_name="schema"), name="redoc"),
    path("api/redoc/redoc.standalone.js", docs.redoc_bundle, name="redoc-bundle"),
]

handler400 = "bookstore.exceptions.handler400"
handler403 = "bookstore.exceptions.handler403"
handler404 = "bookstore.exceptions.handler404"
handler500 = "bookstore.exceptions.handler500"
