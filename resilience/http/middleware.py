"""The resilience middleware: a request's policies matched, then decided before any view work."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import lru_cache

from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from resilience.engine.limiter import LimitSpec
from resilience.http.bulkheads import release_all
from resilience.http.decision import SHOWN, RequestDecision, RequestFacts, key_value, limit_spec
from resilience.http.responses import rate_limit_headers
from resilience.runtime import get_runtime
from resilience.runtime.policies import ConcurrencyRule, PolicyError, RateLimitRule, RouteInfo

_NO_ROUTE: RouteInfo = ("", frozenset())

# The request being served, for limit() in code (resilience/http/limits.py): its client address, who
# sends it, and where the RateLimit fields of the limits it passed are collected.
current_request: ContextVar[HttpRequest | None] = ContextVar("resilience_current_request", default=None)


@lru_cache(maxsize=4096)
def route_info(path: str) -> RouteInfo:
    """Return the URL route name and the view's resilience tags for a path."""
    try:
        match = resolve(path)
    except Resolver404:
        return _NO_ROUTE
    view = getattr(match.func, "view_class", None) or match.func
    tags = frozenset(getattr(view, "resilience_tags", ()) or ())
    return (match.url_name or "", tags)


class ResilienceMiddleware:
    """Admit or refuse each request under the rate-limit, circuit-breaker and concurrency policies that match it.

    One shared-store round trip decides every matched limit and breaker, and tries for each bulkhead's
    slot, before any view work (resilience/http/decision.py); a closed breaker's successes reach the
    store in batches (resilience/runtime/outcomes.py). A call to a breaker this process knows is open,
    or from a client whose key Redis refused for a while yet, is refused with no round trip at all
    (resilience/runtime/refusals.py).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = current_request.set(request)
        try:
            response = self._handle(request)
        finally:
            current_request.reset(token)
        shown = getattr(request, SHOWN, None)
        # A refusal carries its own fields already (those that refused it, and what admitted it before).
        if shown and "RateLimit-Policy" not in response:
            for name, value in rate_limit_headers(shown).items():
                response[name] = value
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Answer a limit() refusal raised in a view that did not answer it itself."""
        from resilience.http.limits import LimitRefused

        return exception.response if isinstance(exception, LimitRefused) else None

    def _handle(self, request: HttpRequest) -> HttpResponse:
        started = (time.perf_counter(), time.thread_time())
        runtime = get_runtime()
        snapshot = runtime.snapshot()
        if not snapshot.ratelimits and not snapshot.breakers and not snapshot.concurrency:
            return self.get_response(request)
        path = request.path_info
        method = request.method or "GET"

        def route() -> RouteInfo:
            return route_info(path)

        # A policy whose matching raises is left out of this request and reported, never a 500.
        failed: list[PolicyError] = []
        breakers = snapshot.match_breakers(method, path, route, failed) if snapshot.breakers else []
        rules = snapshot.match_ratelimits(method, path, route, failed) if snapshot.ratelimits else []
        bulkheads = snapshot.match_concurrency(method, path, route, failed) if snapshot.concurrency else []
        if failed:
            runtime.policy_errors.report(failed)
        decision = RequestDecision(request, runtime, started, snapshot.version, breakers=breakers)
        if breakers:
            refused = decision.known_open()
            if refused is not None:
                return refused
        if rules or bulkheads:
            facts = RequestFacts(request)
            applied: list[tuple[RateLimitRule, LimitSpec]] = []
            for rule in rules:
                if rule.exempt_staff and facts.principal.is_staff:
                    continue
                value = key_value(rule, facts)
                if value is not None:
                    applied.append((rule, limit_spec(rule, value)))
            decision.applied = applied
            bounded: list[tuple[ConcurrencyRule, str]] = []
            for bulkhead in bulkheads:
                value = key_value(bulkhead, facts)
                if value is not None:
                    bounded.append((bulkhead, value))
            decision.bounded = bounded
        if not decision.applied and not breakers:
            if not decision.bounded:
                return self.get_response(request)
            # Bulkheads alone: no limit or breaker to ask, so no admission round trip.
            slots = decision.take_slots()
            if isinstance(slots, HttpResponse):
                return slots
            try:
                return self.get_response(request)
            finally:
                release_all(slots)
        if decision.applied:
            refused = decision.known_limited()
            if refused is not None:
                return refused
        return decision.run(self.get_response)
