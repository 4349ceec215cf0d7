"""Every answer the resilience layer gives in a view's place, and the fields it adds to the view's own.

429 for a rate limit, 503 for a fail-closed store, an open breaker (or its stale copy) and a full
bulkhead, the RateLimit fields (draft-ietf-httpapi-ratelimit-headers) and Server-Timing: one module,
so every refusal a client can meet reads the same way.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from bookstore.problems import problem_response
from resilience.engine.limiter import Algorithm, Decision, LimitSpec, refill_seconds
from resilience.http import stale
from resilience.http.bulkheads import ConcurrencyLimited
from resilience.http.guards import open_problem
from resilience.ops import audit
from resilience.runtime import Runtime
from resilience.runtime.policies import BreakerRule, RateLimitRule

Started = tuple[float, float]  # perf_counter() and thread_time() when the layer got the request


class Shown(NamedTuple):
    """One enforcing policy as the RateLimit fields show it."""

    name: str
    quota: int
    window: int
    remaining: int
    t: int  # seconds: until the next request gets in when exhausted, else until the quota is back
    priority: int


def seconds(value: float) -> int:
    """Return whole seconds, rounded up (a client told 0 s would come straight back)."""
    return max(0, math.ceil(value - 1e-9))


def shown(rule: RateLimitRule, spec: LimitSpec, decision: Decision) -> Shown:
    """Return how the RateLimit fields show ``rule``'s ``decision``."""
    # A token bucket's quota is its burst, refilled at limit/period: the burst refills in this window.
    if rule.algorithm == Algorithm.TOKEN_BUCKET:
        window = refill_seconds(decision.limit, spec.limit, spec.period)
    else:
        window = spec.period
    # When a policy is exhausted, t is when the next request gets in (and equals Retry-After);
    # otherwise, when the whole quota is back.
    t = seconds(decision.retry_after if not decision.allowed else decision.reset_after)
    return Shown(rule.name, decision.limit, window, decision.remaining, t, rule.priority)


def rate_limit_headers(policies: list[Shown]) -> dict[str, str]:
    """Return RateLimit-Policy and RateLimit fields, tightest first."""
    if not policies:
        return {}
    if len(policies) > 1:
        policies = sorted(policies, key=lambda s: (s.remaining, -s.t, s.priority))
    return {
        "RateLimit-Policy": ", ".join(f'"{s.name}";q={s.quota};w={s.window}' for s in policies),
        "RateLimit": ", ".join(f'"{s.name}";r={s.remaining};t={s.t}' for s in policies),
    }


def too_many(request: HttpRequest, violated: list[Shown], headers: dict[str, str]) -> HttpResponse:
    """Return the 429 for the enforcing policies that refused, with ``headers`` (the RateLimit fields)."""
    names = [s.name for s in violated]
    retry_after = max(1, max(s.t for s in violated))
    headers["Retry-After"] = str(retry_after)
    audit.rate_limited(request, names, retry_after)
    return problem_response(
        request,
        quiet=True,
        status=429,
        slug="quota-exceeded",
        title="Too many requests",
        detail=f"Rate limit exceeded; retry in {retry_after} s.",
        headers=headers,
        **{"violated-policies": names},
    )


def reduced_capacity(request: HttpRequest, detail: str, headers: dict[str, str], **extra: Any) -> HttpResponse:
    """Return a 503 temporary-reduced-capacity problem: what the layer answers for a store or a breaker."""
    return problem_response(
        request,
        quiet=True,
        status=503,
        slug="temporary-reduced-capacity",
        title="Service temporarily unavailable",
        detail=detail,
        headers=headers,
        **extra,
    )


def store_down(request: HttpRequest) -> HttpResponse:
    """Return the 503 for a request a fail-closed limit cannot decide while its store is unreachable."""
    retry_after = str(seconds(settings.RESILIENCE_STORE_RETRY_SECONDS) or 1)
    detail = "The rate limiter's store is unreachable and this endpoint fails closed."
    return reduced_capacity(request, detail, {"Retry-After": retry_after})


def breaker_open(request: HttpRequest, runtime: Runtime, rule: BreakerRule, retry_after: float | None) -> HttpResponse:
    """Return the stale copy or the 503 for a call breaker ``rule`` refused (``retry_after`` None: forced open)."""
    if rule.stale and request.method == "GET":
        kept = stale.load_stale(runtime, rule, request)  # never for a request with credentials
        if kept is not None:
            response = HttpResponse(
                kept["body"].encode("latin-1"), status=kept["status"], content_type=kept["content_type"]
            )
            if kept.get("vary"):
                response["Vary"] = kept["vary"]
            age = max(0, int(time.time() - kept["saved_at"]))
            response["Age"] = str(age)
            response["X-Stale-Response"] = f"breaker={rule.name}; age={age}"
            response["X-Circuit-Breaker-State"] = "open"
            return response
    detail, headers, extra = open_problem(rule.name, retry_after)
    return reduced_capacity(request, detail, headers, **extra)


def concurrency_refused(request: HttpRequest, error: ConcurrencyLimited) -> HttpResponse:
    """Return the 503 for a request no slot of a bulkhead was free for."""
    return problem_response(
        request,
        quiet=True,
        status=error.status_code,
        slug=error.slug,
        title=error.title,
        detail=error.detail,
        headers=error.headers,
        **error.extra,
    )


def server_timing(started: Started, outcome: str) -> str:
    """Return the Server-Timing value: the decision's wall time, then the CPU time its thread spent.

    The difference between the two is time the thread waited (for Redis, the GIL, a CPU).
    """
    wall = (time.perf_counter() - started[0]) * 1000
    cpu = (time.thread_time() - started[1]) * 1000
    return f'resilience;dur={wall:.2f};desc="{outcome}", resilience-cpu;dur={cpu:.2f}'


def timed(response: HttpResponse, started: Started, outcome: str) -> HttpResponse:
    """Stamp a response the resilience layer produced with the time it took (Server-Timing)."""
    response["Server-Timing"] = server_timing(started, outcome)
    return response
