"""Operational endpoints: Prometheus metrics, breaker health, the staff dashboard."""

from __future__ import annotations

import os

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from bookstore.disclosure import details_for_insiders, may_see_internals
from bookstore.problems import problem_response
from resilience import services
from resilience.engine.breaker import StoreUnavailable
from resilience.ops.dashboard import dashboard_data


def metrics(request: HttpRequest) -> HttpResponse:
    """Expose metrics to allowed networks or bearer-token holders; sum all workers' files under gunicorn."""
    if not may_see_internals(request):
        return problem_response(request, status=403, slug="permission-denied", title="Metrics are not public")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    body = generate_latest(registry) + generate_latest(_breaker_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


@details_for_insiders
def breakers_health(request: HttpRequest) -> HttpResponse:
    """Return every enabled breaker's live state as JSON (200 even when some are open)."""
    try:
        rows = services.breaker_status()
    except StoreUnavailable:
        return problem_response(request, status=503, slug="store-unavailable", title="Breaker store unreachable")
    return JsonResponse({"breakers": rows})


class BreakerStateCollector:
    """Breaker state as one gauge per state label, read from the shared store at scrape time.

    Every worker reads the same Redis state, so whichever worker answers a scrape reports the
    same truth (resilience4j's shape: bookstore_breaker_state{breaker, state} is 1 for the
    current state and 0 for the others).
    """

    def collect(self) -> list[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "bookstore_breaker_state", "Circuit-breaker state (1 = current).", labels=["breaker", "state"]
        )
        try:
            rows = services.breaker_status()
        except StoreUnavailable:
            return [gauge]
        for row in rows:
            for state in ("closed", "open", "half-open", "forced-open", "forced-closed"):
                gauge.add_metric([str(row["name"]), state], 1.0 if row["detail_state"] == state else 0.0)
        return [gauge]


def breaker_metrics(request: HttpRequest) -> HttpResponse:
    """Return the breaker state gauges in Prometheus text format."""
    if not may_see_internals(request):
        return problem_response(request, status=403, slug="permission-denied", title="Metrics are not public")
    return HttpResponse(generate_latest(_breaker_registry), content_type=CONTENT_TYPE_LATEST)


_breaker_registry = CollectorRegistry()
_breaker_registry.register(BreakerStateCollector())


def _staff_only(request: HttpRequest) -> HttpResponse | None:
    user = request.user
    if not (user.is_authenticated and getattr(user, "is_shop_staff", False)):
        return problem_response(request, status=403, slug="permission-denied", title="Staff only")
    return None


def dashboard(request: HttpRequest) -> HttpResponse:
    """Render the staff resilience dashboard (it refreshes itself from dashboard_data)."""
    refused = _staff_only(request)
    if refused is not None:
        return refused
    context = {
        **admin.site.each_context(request),
        "title": "Resilience dashboard",
        "data_url": reverse("resilience-dashboard-data"),
        "initial": dashboard_data(),
        "refresh_ms": 3000,
    }
    return TemplateResponse(request, "admin/resilience/dashboard.html", context)


def dashboard_json(request: HttpRequest) -> HttpResponse:
    """Return the dashboard's data as JSON, for its refresh loop."""
    refused = _staff_only(request)
    if refused is not None:
        return refused
    response = JsonResponse(dashboard_data())
    response["Cache-Control"] = "no-store"
    return response
