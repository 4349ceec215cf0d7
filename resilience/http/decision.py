"""One request's way through the resilience layer: what matched it, what the store answered, what it is told.

The middleware matches a request's policies and hands them to a RequestDecision, which carries
them through each step: refusals known without asking, the one admission round trip, the limits'
verdict, the bulkheads' slots, the view under its breakers and their outcomes. ``limit()`` in code
(limits.py) takes the same steps for its own policies. The answers themselves come from responses.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from resilience.engine.limiter import LimitSpec
from resilience.http import responses, stale
from resilience.http.bulkheads import ConcurrencyLimited, Slot, acquire_all, release_all, slot_request
from resilience.http.clientip import client_ip, ip_key
from resilience.http.guards import (
    PUBLIC_STATE,
    Call,
    announce,
    client_retry_after,
    held_by_request,
    known_open,
    remember_refusal,
)
from resilience.http.principal import Principal, principal
from resilience.http.responses import Shown, Started
from resilience.models import hash_key_value
from resilience.ops.metrics import breaker_rejections
from resilience.runtime import Runtime, key_prefix
from resilience.runtime.policies import BREAKER, CONCURRENCY, RATELIMIT, BreakerRule, ConcurrencyRule, RateLimitRule
from resilience.stores.admission import Admission
from resilience.stores.keys import limit_key
from resilience.stores.redis_concurrency import Attempt, SlotRequest

# Request attribute: the enforcing policies that admitted the request (list[Shown]), by the
# middleware and by limit() in the view; the RateLimit fields are written from it once, at the end.
SHOWN = "_resilience_shown"
# Limit specs remembered per policy (the policy's counted values, as keys): a few clients make most requests.
SPECS_PER_RULE = 4096


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


def key_value(rule: RateLimitRule | ConcurrencyRule, facts: RequestFacts) -> str | None:
    """Return what the rule counts this request by, or None when the rule does not apply."""
    if rule.key == "ip":
        return facts.ip
    if rule.key == "global":
        return "all"
    if rule.key == "user":
        user_id = facts.principal.user_id
        return f"u{user_id}" if user_id is not None else f"ip:{facts.ip}"
    value = facts.request.META.get(rule.header_meta)
    # A request without the header is not what a header policy counts; per-IP policies cover it.
    return hash_key_value(value) if value else None


def limit_spec(rule: RateLimitRule, value: str) -> LimitSpec:
    """Return the limit ``rule`` puts on ``value`` (its override, if staff set one)."""
    spec = rule.specs.get(value)
    if spec is None:
        override = rule.overrides.get(value)
        spec = LimitSpec(
            key=limit_key(key_prefix(), rule.id, rule.epoch, value),
            algorithm=rule.algorithm,
            limit=rule.limit if override is None else override,
            period=rule.period,
            burst=rule.burst if override is None else None,
            enforce=rule.enforce,
        )
        if len(rule.specs) >= SPECS_PER_RULE:
            rule.specs.clear()
        rule.specs[value] = spec
    return spec


Applied = Sequence[tuple[RateLimitRule, LimitSpec]]


class RequestDecision:
    """Carry one request's matched policies through the steps that admit, refuse or guard it."""

    __slots__ = ("request", "runtime", "started", "version", "applied", "breakers", "bounded", "admission", "fallback")

    def __init__(
        self,
        request: HttpRequest,
        runtime: Runtime,
        started: Started,
        version: int,
        applied: Applied = (),
        breakers: Sequence[BreakerRule] = (),
        bounded: Sequence[tuple[ConcurrencyRule, str]] = (),
    ) -> None:
        self.request = request
        self.runtime = runtime
        self.started = started
        self.version = version  # of the policies the request was matched against
        self.applied = applied
        self.breakers = breakers
        self.bounded = bounded
        self.admission: Admission | None = None
        self.fallback = False  # decided by the in-process fallback store

    @property
    def remember(self) -> bool:
        """Whether a refusal is worth remembering: Redis decided it under the policies this request matched.

        After a change, the next request is matched against the new ones.
        """
        return self.admission is not None and not self.fallback and self.admission.hit.version == self.version

    # --- refusals known without asking ----------------------------------------------------------
    def known_open(self) -> HttpResponse | None:
        """Refuse, with no round trip, a call to a breaker this process knows is still open.

        Such a request is not counted against rate limits: it was refused before any limit was asked.
        """
        for rule in self.breakers:
            known = known_open(self.runtime, rule.name)
            if known is not None:
                breaker_rejections.labels(rule.name).inc()
                response = responses.breaker_open(self.request, self.runtime, rule, known.retry_after)
                return responses.timed(response, self.started, "refused")
        return None

    def known_limited(self) -> HttpResponse | None:
        """Refuse, with no round trip, a request whose key Redis refused and that nothing can admit yet.

        Its other policies are not asked, and count nothing: Redis would have refused it too, and
        a refused request consumes no quota anywhere.
        """
        known = self.runtime.known_refusals()
        if known is None:
            return None
        violated: list[Shown] = []
        for rule, spec in self.applied:
            if rule.enforce:
                entry = known.limited(spec.key)
                if entry is not None:
                    left, detail = entry
                    violated.append(detail._replace(t=responses.seconds(left)))
                    rule.count("limited")
                    if self.runtime.tally is not None:
                        self.runtime.tally.add(rule.label, spec.key)
        if not violated:
            return None
        refused = responses.too_many(self.request, violated, responses.rate_limit_headers(violated))
        return responses.timed(refused, self.started, "refused")

    # --- the admission round trip ---------------------------------------------------------------
    def admit(self, slots: Sequence[SlotRequest] = ()) -> None:
        """Ask the store once for every limit and breaker, and a first try for each bulkhead's slot."""
        applied = self.applied
        self.admission, self.fallback = self.runtime.admit(
            [spec for _, spec in applied],
            [b.config for b in self.breakers],
            labels=[rule.label for rule, _ in applied],
            policies=[
                *((RATELIMIT, rule.name) for rule, _ in applied),
                *((BREAKER, b.name) for b in self.breakers),
                *((CONCURRENCY, rule.name) for rule, _ in self.bounded),
            ],
            slots=slots,
        )

    def judge_limits(self, admitted_before: list[Shown] | None = None) -> HttpResponse | list[Shown]:
        """Return the 429/503 response that refuses the request, or the enforcing policies that admitted it.

        A 429's RateLimit fields also show ``admitted_before``: what admitted the request earlier (the
        middleware's limits, when limit() in a view refuses it).
        """
        assert self.admission is not None, "admit() first"
        applied, fallback = self.applied, self.fallback
        if fallback and any(rule.enforce and not rule.fail_open for rule, _ in applied):
            for rule, _ in applied:
                rule.count("store_error")
            return responses.store_down(self.request)
        result = self.admission.hit
        items = [(rule, spec, d) for (rule, spec), d in zip(applied, result.decisions, strict=True)]
        for rule, _, d in items:
            if fallback:
                rule.count("store_error")
            elif d.allowed:
                rule.count("allowed")
            else:
                rule.count("limited" if rule.enforce else "dry_run_would_limit")
        admitted = [responses.shown(rule, spec, d) for rule, spec, d in items if rule.enforce]
        if result.allowed:
            return admitted
        violated = [
            (spec, d, responses.shown(rule, spec, d)) for rule, spec, d in items if rule.enforce and not d.allowed
        ]
        known = self.runtime.known_refusals() if self.remember else None
        if known is not None:
            for spec, d, detail in violated:
                # Counted from before asking: never refused longer than Redis would (resilience/runtime/refusals.py).
                known.note_limited(spec.key, d.retry_after, asked_at=self.started[0], detail=detail)
        headers = responses.rate_limit_headers([*(admitted_before or ()), *admitted])
        return responses.too_many(self.request, [detail for _, _, detail in violated], headers)

    # --- the middleware's whole way ---------------------------------------------------------------
    def run(self, get_response: Callable[[HttpRequest], HttpResponse]) -> HttpResponse:
        """Decide the request in one round trip, then run the view under its bulkheads and breakers."""
        # Each bulkhead's first try for a slot rides on the same round trip, after the limits and breakers.
        adaptive = self.runtime.adaptive
        requests = [slot_request(rule, value, adaptive.limit(rule)) for rule, value in self.bounded]
        self.admit(requests)
        admission = self.admission
        assert admission is not None
        if self.applied:
            outcome = self.judge_limits()
            if isinstance(outcome, HttpResponse):
                return responses.timed(outcome, self.started, "refused")  # no view work, no database query
            # Written once the response is made (middleware), with those of limit() in the view.
            setattr(self.request, SHOWN, outcome)
        # Slots last: a request a limit refuses never takes (or waits for) one. A breaker's
        # half-open trial slot taken for a request refused here is left to its lease (see guarded()).
        # A request a breaker refuses (answered in guarded()) takes no slot either.
        slots: list[Slot] | HttpResponse = []
        if self.bounded and all(permit.allowed for permit, _ in admission.permits):
            slots = self.take_slots(requests, admission.slots)
        if isinstance(slots, HttpResponse):
            return slots
        # What deciding cost this request, for Server-Timing (the view's own time is not in it).
        timing = responses.server_timing(self.started, "admitted")
        try:
            response = self.guarded(get_response) if self.breakers else get_response(self.request)
        finally:
            release_all(slots)
        # An open breaker's refusal already carries its own, complete timing: keep it.
        response.setdefault("Server-Timing", timing)
        return response

    def take_slots(
        self, requests: Sequence[SlotRequest] = (), attempts: Sequence[Attempt] = ()
    ) -> list[Slot] | HttpResponse:
        """Take a slot of every matched bulkhead (waiting as each allows), or return the 503.

        ``requests`` and ``attempts`` are the first tries the admission round trip made, if it made them.
        """
        try:
            return acquire_all(self.runtime, list(self.bounded), requests, attempts)
        except ConcurrencyLimited as e:
            return responses.timed(responses.concurrency_refused(self.request, e), self.started, "refused")

    def guarded(self, get_response: Callable[[HttpRequest], HttpResponse]) -> HttpResponse:
        """Run the view under the matched breakers, or answer for the first one that is open."""
        assert self.admission is not None
        calls: list[Call] = []
        for rule, (permit, transitions) in zip(self.breakers, self.admission.permits, strict=False):
            announce(transitions)
            if not permit.allowed:
                breaker_rejections.labels(rule.name).inc()
                if self.remember:
                    remember_refusal(self.runtime, rule.name, permit, asked_at=self.started[0])
                # An earlier breaker admitted a call that never ran: report no outcome for it. A success
                # would close a half-open breaker on no evidence; its trial slot is left to the lease
                # (the tradeoff admit_main.lua accepts), and a closed permit holds nothing.
                refused = responses.breaker_open(self.request, self.runtime, rule, client_retry_after(permit))
                return responses.timed(refused, self.started, "refused")
            calls.append(Call(self.runtime, rule, permit, self.fallback))
        held = held_by_request.set(held_by_request.get() | {call.rule.name for call in calls})
        try:
            response = get_response(self.request)
        except Exception:
            for call in calls:
                call.done(success=False)
            raise
        finally:
            held_by_request.reset(held)
        for call in calls:
            call.done_with_status(response.status_code)
        response["X-Circuit-Breaker-State"] = PUBLIC_STATE[calls[0].permit.state] if calls else "closed"
        request = self.request
        if (
            request.method == "GET"
            and 200 <= response.status_code < 300
            and not response.streaming
            and self.runtime.store_available()
        ):
            # Kept by StaleCopyMiddleware, once the outer middleware has set its cookies and Vary.
            setattr(request, stale.WANTED, [call.rule for call in calls if call.rule.stale])
        return response
