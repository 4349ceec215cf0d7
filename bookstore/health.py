"""Health probes: /health/live (the process answers) and /health/ready (this instance can serve).

HealthCheckMiddleware answers both paths ahead of the rest of the stack, so nothing between a
probe and its checks can refuse or stall it: no rate limit or breaker, no SSL redirect, and no
policy reload of the resilience middleware. Liveness touches no dependency at all.

Ready means this instance can serve: PostgreSQL can be reached. Redis is not needed to serve
(limits fall back to per-worker counting, breakers to per-process state), so a Redis that is down,
or that answers PING but cannot run the admission script (a renamed or disabled command, a
read-only replica, any error), makes the answer 200 with "status": "degraded" and
bookstore_health_status{status="degraded"} = 1: a load balancer that pulled every instance over it
would turn a degraded service into an outage.

The database check takes a connection as a request does, through the database circuit breaker
(resilience/db/guard.py): while the breaker is open it fails at once, without waiting on the pool
or trying the server, and once the open period is over the probe's connection may be the
half-open trial that finds PostgreSQL back. So a probe never hammers a dead database, and still
notices the moment it returns when no traffic reaches the instance (the load balancer pulled it).

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

# The last readiness answer, one-hot: ok, degraded (serving without Redis) or not-ready.
STATUSES = ("ok", "degraded", "not-ready")
ready_status = Gauge(
    "bookstore_health_status",
    "The last readiness answer (1 = this status): ok, degraded (serving without Redis) or not-ready.",
    ["status"],
    multiprocess_mode="livemostrecent",
)
# Without these the instance cannot serve; every other check only degrades it.
REQUIRED = frozenset({"database"})

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
    """Run the real admission script on a probe key in Redis; raise if it cannot decide.

    PING alone would pass a Redis that refuses every admission (EVALSHA renamed away, a read-only
    replica), while every request falls back to per-worker limits.
    """
    from resilience.engine.limiter import MAX_LIMIT, Algorithm, LimitSpec
    from resilience.runtime import get_runtime, key_prefix
    from resilience.stores.keys import health_probe_key

    runtime = get_runtime()
    # A dry-run limit no probe rate can reach: counted for a second, never refused, no stats.
    probe = LimitSpec(health_probe_key(key_prefix()), Algorithm.FIXED_WINDOW, MAX_LIMIT, 1, enforce=False)
    # The store's client: django-redis applies REDIS_SOCKET_TIMEOUT / REDIS_CONNECT_TIMEOUT to it.
    runtime.shared_admission().admit([probe], [])


def checks() -> dict[str, Callable[[], None]]:
    """Return the readiness checks that apply to this configuration, by name."""
    from resilience.runtime import redis_configured

    found: dict[str, Callable[[], None]] = {"database": check_database}
    if redis_configured():
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


def readiness(results: dict[str, str]) -> str:
    """Return ok, degraded or not-ready for check results, and record it in bookstore_health_status."""
    failed = {name for name, value in results.items() if value != "ok"}
    status = "not-ready" if failed & REQUIRED else "degraded" if failed else "ok"
    for each in STATUSES:
        ready_status.labels(each).set(1 if each == status else 0)
    return status


@details_for_insiders
@never_cache
@require_safe
def ready(request: HttpRequest) -> HttpResponse:
    """Answer 200 while PostgreSQL answers ("degraded" if Redis does not), else 503 naming the failures."""
    results = run_checks(getattr(settings, "HEALTH_CHECK_TIMEOUT", DEFAULT_TIMEOUT))
    status = readiness(results)
    if status != "not-ready":
        return JsonResponse({"status": status, "checks": results})
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
