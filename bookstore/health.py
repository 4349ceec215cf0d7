"""Health probes: /health/live (the process answers) and /health/ready (PostgreSQL and Redis answer).

HealthCheckMiddleware answers both paths ahead of the rest of the stack, so nothing between a
probe and its checks can refuse or stall it: no rate limit or breaker, no SSL redirect, and no
policy reload of the resilience middleware (which waits on the database pool when PostgreSQL
hangs; a liveness probe that waits on the database gets healthy processes restarted).

Readiness runs its checks side by side in a small thread pool and waits for them at most
HEALTH_CHECK_TIMEOUT seconds, so a dependency that hangs (a frozen host accepts the TCP
connection and then says nothing: no statement or socket timeout fires in time) costs the probe
one timeout, not the orchestrator's whole probe budget. The tradeoff: a hung check keeps its pool
thread until the driver gives up; with every thread stuck, further probes queue and time out at
once, which is the right answer while the dependency hangs.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import ClassVar

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import Gauge

from bookstore.disclosure import details_for_insiders
from bookstore.env import env_float
from bookstore.problems import problem_response

# Seconds a readiness check may take before it counts as failed (settings.HEALTH_CHECK_TIMEOUT wins).
DEFAULT_TIMEOUT = env_float("HEALTH_CHECK_TIMEOUT", 1.0, minimum=0.05)

# The last readiness answer per check (1 = ok), from whichever worker answered the probe most
# recently; dead workers' values are dropped in multiprocess mode.
check_up = Gauge(
    "bookstore_health_check_up",
    "Result of the last readiness check per dependency (1 = ok, 0 = failing).",
    ["check"],
    multiprocess_mode="livemostrecent",
)

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")


def check_database() -> None:
    """Run SELECT 1 on the default database; raise on any failure."""
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # This runs in a pool thread, outside any request: hand the connection back now.
        connection.close()


def check_redis() -> None:
    """PING the Redis behind the default cache; raise on any failure."""
    from django_redis import get_redis_connection

    # django-redis applies settings.REDIS_SOCKET_TIMEOUT / REDIS_CONNECT_TIMEOUT to this client.
    if not get_redis_connection("default").ping():
        raise ConnectionError("PING was not answered with PONG")


def checks() -> dict[str, Callable[[], None]]:
    """Return the readiness checks that apply to this configuration, by name."""
    found: dict[str, Callable[[], None]] = {"database": check_database}
    if settings.REDIS_URL:
        found["redis"] = check_redis
    return found


def run_checks(timeout: float) -> dict[str, str]:
    """Run every check concurrently; return "ok" or "error: ..." per check within timeout seconds."""
    futures = {name: _pool.submit(check) for name, check in checks().items()}
    concurrent.futures.wait(futures.values(), timeout=timeout)
    results: dict[str, str] = {}
    for name, future in futures.items():
        if not future.done():
            future.cancel()  # still queued behind hung checks: never start it
            results[name] = f"error: no answer within {timeout:g} s"
        elif (error := future.exception()) is not None:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            results[name] = f"error: {type(error).__name__}: {first_line}"[:200]
        else:
            results[name] = "ok"
        check_up.labels(name).set(1 if results[name] == "ok" else 0)
    return results


@never_cache
@require_safe
def live(request: HttpRequest) -> HttpResponse:
    """Answer 200 while the process can serve HTTP; touch no dependency."""
    return JsonResponse({"status": "ok"})


@details_for_insiders
@never_cache
@require_safe
def ready(request: HttpRequest) -> HttpResponse:
    """Answer 200 when PostgreSQL (and Redis, if configured) answer in time, else 503 naming the failures."""
    results = run_checks(getattr(settings, "HEALTH_CHECK_TIMEOUT", DEFAULT_TIMEOUT))
    if all(value == "ok" for value in results.values()):
        return JsonResponse({"status": "ok", "checks": results})
    failed = sorted(name for name, value in results.items() if value != "ok")
    return problem_response(
        request,
        status=503,
        slug="not-ready",
        title="Not ready",
        detail=f"Failing: {', '.join(failed)}.",
        checks=results,
    )


class HealthCheckMiddleware:
    """Answer GET/HEAD /health/live and /health/ready before the middleware that follows it."""

    views: ClassVar[dict[str, Callable[[HttpRequest], HttpResponse]]] = {
        "/health/live": live,
        "/health/ready": ready,
    }

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = self.views.get(request.path_info)
        if view is None or request.method not in ("GET", "HEAD"):
            return self.get_response(request)
        return view(request)
