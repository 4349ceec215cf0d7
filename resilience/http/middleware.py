"""The resilience middleware: rate limits decided before any view work, in one Redis round trip."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from functools import lru_cache
from typing import NamedTuple

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from bookstore.problems import problem_response
from resilience.engine.limiter import Algorithm, Decision, LimitSpec, refill_seconds
from resilience.http import stale
from resilience.http.bulkheads import ConcurrencyLimited, Slot, acquire_all, release_all, slot_request
from resilience.http.clientip import client_ip, ip_key
from resilience.http.guards import (
    PUBLIC_STATE,
    Call,
    announce,
    client_retry_after,
    held_by_request,
    known_open,
    open_problem,
    remember_refusal,
)
from resilience.http.principal import Principal, principal
from resilience.ops import audit
from resilience.ops.metrics import breaker_rejections
from resilience.runtime import Runtime, get_runtime, key_prefix
from resilience.runtime.policies import (
    BREAKER,
    CONCURRENCY,
    RATELIMIT,
    BreakerRule,
    ConcurrencyRule,
    PolicyError,
    RateLimitRule,
    RouteInfo,
)
from resilience.stores.admission import Admission
from resilience.stores.keys import limit_key
from resilience.stores.redis_concurrency import Attempt, SlotRequest

_NO_ROUTE: RouteInfo = ("", frozenset())

# The request being served, for limit() in code (resilience/http/limits.py): its client address, who
# sends it, and where the RateLimit fields of the limits it passed are collected.
current_request: ContextVar[HttpRequest | None] = ContextVar("resilience_current_request", default=None)
# Request attribute: the enforcing policies that admitted the request (list[Shown]), by the
# middleware and by limit() in the view; the RateLimit fields are written from it once, at the end.
SHOWN = "_resilience_shown"


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


class RequestFacts:
    """Per-request facts computed at most once."""

    __slots__ = ("request", "_ip", "_principal")

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self._ip: str | None = None
        self._principal: Principal | None = None

    @property
    def ip(self) -> str:
        if self._ip is None:
            self._ip = ip_key(client_ip(self.request), settings.RATELIMIT_IPV6_PREFIX)
        return self._ip

    @property
    def principal(self) -> Principal:
        if self._principal is None:
            self._principal = principal(self.request)
        return self._principal


def _key_value(rule: RateLimitRule | ConcurrencyRule, facts: RequestFacts) -> str | None:
    """Return what the rule counts this request by, or None when the rule does not apply."""
    if rule.key == "ip":
        return facts.ip
    if rule.key == "global":
        return "all"
    if rule.key == "user":
        user_id = facts.principal.user_id
        return f"u{user_id}" if user_id is not None else f"ip:{facts.ip}"
    from resilience.models import hash_key_value

    value = facts.request.META.get(rule.header_meta)
    # A request without the header is not what a header policy counts; per-IP policies cover it.
    return hash_key_value(value) if value else None


def limit_spec(rule: RateLimitRule, value: str) -> LimitSpec:
    override = rule.overrides.get(value)
    return LimitSpec(
        key=limit_key(key_prefix(), rule.id, rule.epoch, value),
        algorithm=rule.algorithm,
        limit=rule.limit if override is None else override,
        period=rule.period,
        burst=rule.burst if override is None else None,
        enforce=rule.enforce,
    )


def _seconds(value: float) -> int:
    return max(0, math.ceil(value - 1e-9))


def _t(decision: Decision) -> int:
    # When a policy is exhausted, t is when the next request gets in (and equals Retry-After);
    # otherwise, when the whole quota is back.
    return _seconds(decision.retry_after if not decision.allowed else decision.reset_after)


def _window(rule: RateLimitRule, spec: LimitSpec, decision: Decision) -> int:
    # A token bucket's quota is its burst, refilled at limit/period: the burst refills in this window.
    if rule.algorithm == Algorithm.TOKEN_BUCKET:
        return refill_seconds(decision.limit, spec.limit, spec.period)
    return spec.period


class Shown(NamedTuple):
    """One enforcing policy as the RateLimit fields show it."""

    name: str
    quota: int
    window: int
    remaining: int
    t: int  # seconds: until the next request gets in when exhausted, else until the quota is back
    priority: int


def _shown(rule: RateLimitRule, spec: LimitSpec, decision: Decision) -> Shown:
    window = _window(rule, spec, decision)
    return Shown(rule.name, decision.limit, window, decision.remaining, _t(decision), rule.priority)


def rate_limit_headers(shown: list[Shown]) -> dict[str, str]:
    """Return RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers), tightest first."""
    if not shown:
        return {}
    shown = sorted(shown, key=lambda s: (s.remaining, -s.t, s.priority))
    return {
        "RateLimit-Policy": ", ".join(f'"{s.name}";q={s.quota};w={s.window}' for s in shown),
        "RateLimit": ", ".join(f'"{s.name}";r={s.remaining};t={s.t}' for s in shown),
    }


def _too_many(request: HttpRequest, violated: list[Shown], headers: dict[str, str]) -> HttpResponse:
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


Started = tuple[float, float]  # perf_counter() and thread_time() when the middleware got the request


def _timing(started: Started, outcome: str) -> str:
    """Return the Server-Timing value: the decision's wall time, then the CPU time its thread spent.

    The difference between the two is time the thread waited (for Redis, the GIL, a CPU).
    """
    wall = (time.perf_counter() - started[0]) * 1000
    cpu = (time.thread_time() - started[1]) * 1000
    return f'resilience;dur={wall:.2f};desc="{outcome}", resilience-cpu;dur={cpu:.2f}'


def _timed(response: HttpResponse, started: Started, outcome: str) -> HttpResponse:
    """Stamp a response the resilience layer produced with the time it took (Server-Timing)."""
    response["Server-Timing"] = _timing(started, outcome)
    return response


def known_limited(
    request: HttpRequest, runtime: Runtime, applied: list[tuple[RateLimitRule, LimitSpec]], started: Started
) -> HttpResponse | None:
    """Refuse, with no round trip, a request whose key Redis refused and that nothing can admit yet.

    Its other policies are not asked, and count nothing: Redis would have refused it too, and
    a refused request consumes no quota anywhere.
    """
    known = runtime.known_refusals()
    if known is None:
        return None
    violated: list[Shown] = []
    for rule, spec in applied:
        if rule.enforce:
            entry = known.limited(spec.key)
            if entry is not None:
                left, shown = entry
                violated.append(shown._replace(t=_seconds(left)))
                rule.count("limited")
                if runtime.tally is not None:
                    runtime.tally.add(rule.label, spec.key)
    if not violated:
        return None
    return _timed(_too_many(request, violated, rate_limit_headers(violated)), started, "refused")


def decide_limits(
    request: HttpRequest,
    applied: list[tuple[RateLimitRule, LimitSpec]],
    admission: Admission,
    from_fallback: bool,
    runtime: Runtime,
    started: Started,
    remember: bool,
    admitted_before: list[Shown] | None = None,
) -> HttpResponse | list[Shown]:
    """Return the 429/503 response that refuses the request, or the enforcing policies that admitted it.

    A 429's RateLimit fields also show ``admitted_before``: what admitted the request earlier (the
    middleware's limits, when limit() in a view refuses it).
    """
    if from_fallback and any(rule.enforce and not rule.fail_open for rule, _ in applied):
        for rule, _ in applied:
            rule.count("store_error")
        return problem_response(
            request,
            quiet=True,
            status=503,
            slug="temporary-reduced-capacity",
            title="Service temporarily unavailable",
            detail="The rate limiter's store is unreachable and this endpoint fails closed.",
            headers={"Retry-After": str(_seconds(settings.RESILIENCE_STORE_RETRY_SECONDS) or 1)},
        )
    result = admission.hit
    items = [(rule, spec, d) for (rule, spec), d in zip(applied, result.decisions, strict=True)]
    for rule, _, d in items:
        if from_fallback:
            rule.count("store_error")
        elif d.allowed:
            rule.count("allowed")
        else:
            rule.count("limited" if rule.enforce else "dry_run_would_limit")
    shown = [_shown(rule, spec, d) for rule, spec, d in items if rule.enforce]
    if result.allowed:
        return shown
    violated = [(spec, d, _shown(rule, spec, d)) for rule, spec, d in items if rule.enforce and not d.allowed]
    known = runtime.known_refusals() if remember else None
    if known is not None:
        for spec, d, detail in violated:
            # Counted from before asking: never refused longer than Redis would (resilience/runtime/refusals.py).
            known.note_limited(spec.key, d.retry_after, asked_at=started[0], detail=detail)
    headers = rate_limit_headers([*(admitted_before or ()), *shown])
    return _too_many(request, [detail for _, _, detail in violated], headers)


class ResilienceMiddleware:
    """Admit or refuse each request under the rate-limit and circuit-breaker policies that match it.

    One shared-store round trip decides every matched limit and breaker before any view work;
    a breaker-protected request makes a second one after the response, to record the outcome.
    A call to a breaker this process knows is open, or from a client whose key Redis refused for a
    while yet, is refused with none (resilience/runtime/refusals.py).
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
        if failed:
            runtime.policy_errors.report(failed)
            failed = []
        if breakers:
            refused = self._known_open(request, runtime, breakers, started)
            if refused is not None:
                return refused
        rules = snapshot.match_ratelimits(method, path, route, failed) if snapshot.ratelimits else []
        bulkheads = snapshot.match_concurrency(method, path, route, failed) if snapshot.concurrency else []
        if failed:
            runtime.policy_errors.report(failed)
        applied: list[tuple[RateLimitRule, LimitSpec]] = []
        bounded: list[tuple[ConcurrencyRule, str]] = []
        if rules or bulkheads:
            facts = RequestFacts(request)
            for rule in rules:
                if rule.exempt_staff and facts.principal.is_staff:
                    continue
                value = _key_value(rule, facts)
                if value is not None:
                    applied.append((rule, limit_spec(rule, value)))
            for bulkhead_rule in bulkheads:
                value = _key_value(bulkhead_rule, facts)
                if value is not None:
                    bounded.append((bulkhead_rule, value))
        if not applied and not breakers:
            if not bounded:
                return self.get_response(request)
            slots = self._slots(request, runtime, bounded, started)
            if isinstance(slots, HttpResponse):
                return slots
            try:
                return self.get_response(request)
            finally:
                release_all(slots)
        if applied:
            refused = known_limited(request, runtime, applied, started)
            if refused is not None:
                return refused

        return self._decide(request, runtime, applied, breakers, started, snapshot.version, bounded)

    def _slots(
        self,
        request: HttpRequest,
        runtime: Runtime,
        bounded: list[tuple[ConcurrencyRule, str]],
        started: Started,
        requests: Sequence[SlotRequest] = (),
        attempts: Sequence[Attempt] = (),
    ) -> list[Slot] | HttpResponse:
        """Take a slot of every matched concurrency policy (waiting as each allows), or return the 503.

        ``requests`` and ``attempts`` are the first tries the admission round trip made, if it made them.
        """
        try:
            return acquire_all(runtime, bounded, requests, attempts)
        except ConcurrencyLimited as e:
            problem = problem_response(
                request,
                quiet=True,
                status=e.status_code,
                slug=e.slug,
                title=e.title,
                detail=e.detail,
                headers=e.headers,
                **e.extra,
            )
            return _timed(problem, started, "refused")

    def _known_open(
        self, request: HttpRequest, runtime: Runtime, breakers: list[BreakerRule], started: Started
    ) -> HttpResponse | None:
        """Refuse, with no round trip, a call to a breaker this process knows is still open.

        Such a request is not counted against rate limits: it was refused before any limit was asked.
        """
        for rule in breakers:
            known = known_open(runtime, rule.name)
            if known is not None:
                breaker_rejections.labels(rule.name).inc()
                return _timed(self._open_response(request, runtime, rule, known.retry_after), started, "refused")
        return None

    def _decide(
        self,
        request: HttpRequest,
        runtime: Runtime,
        applied: list[tuple[RateLimitRule, LimitSpec]],
        breakers: list[BreakerRule],
        started: Started,
        version: int,
        bounded: list[tuple[ConcurrencyRule, str]],
    ) -> HttpResponse:
        # Each bulkhead's first try for a slot rides on the same round trip, after the limits and breakers.
        requests = [slot_request(rule, value) for rule, value in bounded]
        admission, from_fallback = runtime.admit(
            [spec for _, spec in applied],
            [b.config for b in breakers],
            labels=[rule.label for rule, _ in applied],
            policies=[
                *((RATELIMIT, rule.name) for rule, _ in applied),
                *((BREAKER, b.name) for b in breakers),
                *((CONCURRENCY, rule.name) for rule, _ in bounded),
            ],
            slots=requests,
        )
        # A refusal is worth remembering only if Redis decided it under the policies this request
        # was matched against: after a change, the next request is matched against the new ones.
        remember = not from_fallback and admission.hit.version == version
        if applied:
            outcome = decide_limits(request, applied, admission, from_fallback, runtime, started, remember)
            if isinstance(outcome, HttpResponse):
                return _timed(outcome, started, "refused")  # no view work, no database query
            # Written once the response is made (__call__), with those of limit() in the view.
            setattr(request, SHOWN, outcome)
        # Slots last: a request a limit refuses never takes (or waits for) one. A breaker's
        # half-open trial slot taken for a request refused here is left to its lease (see _guarded).
        # A request a breaker refuses (answered in _guarded) takes no slot either.
        slots: list[Slot] | HttpResponse = []
        if bounded and all(permit.allowed for permit, _ in admission.permits):
            slots = self._slots(request, runtime, bounded, started, requests, admission.slots)
        if isinstance(slots, HttpResponse):
            return slots
        # What deciding cost this request, for Server-Timing (the view's own time is not in it).
        timing = _timing(started, "admitted")
        try:
            if not breakers:
                response = self.get_response(request)
            else:
                response = self._guarded(request, runtime, breakers, admission, from_fallback, started, remember)
        finally:
            release_all(slots)
        # An open breaker's refusal already carries its own, complete timing: keep it.
        response.setdefault("Server-Timing", timing)
        return response

    def _guarded(
        self,
        request: HttpRequest,
        runtime: Runtime,
        rules: list[BreakerRule],
        admission: Admission,
        from_fallback: bool,
        started: Started,
        remember: bool,
    ) -> HttpResponse:
        """Run the view under the matched breakers, or answer for the first one that is open."""
        calls: list[Call] = []
        for rule, (permit, transitions) in zip(rules, admission.permits, strict=False):
            announce(transitions)
            if not permit.allowed:
                breaker_rejections.labels(rule.name).inc()
                if remember:
                    remember_refusal(runtime, rule.name, permit, asked_at=started[0])
                # An earlier breaker admitted a call that never ran: report no outcome for it. A success
                # would close a half-open breaker on no evidence; its trial slot is left to the lease
                # (the tradeoff admit_main.lua accepts), and a closed permit holds nothing.
                return _timed(
                    self._open_response(request, runtime, rule, client_retry_after(permit)), started, "refused"
                )
            calls.append(Call(runtime, rule, permit, from_fallback))
        held = held_by_request.set(held_by_request.get() | {call.rule.name for call in calls})
        try:
            response = self.get_response(request)
        except Exception:
            for call in calls:
                call.done(success=False)
            raise
        finally:
            held_by_request.reset(held)
        for call in calls:
            call.done_with_status(response.status_code)
        state = PUBLIC_STATE[calls[0].permit.state] if calls else "closed"
        response["X-Circuit-Breaker-State"] = state
        if (
            request.method == "GET"
            and 200 <= response.status_code < 300
            and not response.streaming
            and runtime.store_available()
        ):
            # Kept by StaleCopyMiddleware, once the outer middleware has set its cookies and Vary.
            setattr(request, stale.WANTED, [call.rule for call in calls if call.rule.stale])
        return response

    def _open_response(
        self, request: HttpRequest, runtime: Runtime, rule: BreakerRule, retry_after: float | None
    ) -> HttpResponse:
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
