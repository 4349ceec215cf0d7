"""Circuit breakers in Django: the code guard and transitions (log, metrics, signal).

`with breaker("search"):` and `@breaker("search")` protect a code path with the policy of that
name, sharing state with the middleware that protects matched routes. When the named policy does
not exist or is disabled, the guard lets everything through.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ContextDecorator
from contextvars import ContextVar
from typing import Any, NamedTuple

from django.dispatch import Signal
from django.http import Http404

from bookstore.exceptions import ApplicationError
from resilience.engine.breaker import Permit, State, StoreUnavailable, Transition
from resilience.ops.metrics import breaker_rejections, breaker_transitions
from resilience.runtime import Runtime, get_runtime
from resilience.runtime.policies import BREAKER, BreakerRule

log = logging.getLogger("resilience.http.guards")

# Sent once per transition, by whichever process applied it (gobreaker's OnStateChange).
# kwargs: name, from_state, to_state, generation, at
breaker_state_changed = Signal()

# The states clients see in X-Circuit-Breaker-State; a forced state looks like the one it forces.
PUBLIC_STATE = {
    State.CLOSED: "closed",
    State.FORCED_CLOSED: "closed",
    State.OPEN: "open",
    State.FORCED_OPEN: "open",
    State.HALF_OPEN: "half-open",
}


# Breakers the middleware holds a permit for while the view runs: a code guard of the same name
# inside that view must not ask again, or each request would count twice and take two trial slots.
held_by_request: ContextVar[frozenset[str]] = ContextVar("breakers_held_by_request", default=frozenset())


def client_retry_after(permit: Permit) -> float | None:
    """Return the seconds clients are told to wait after a refusal, or None while an operator holds it open.

    A forced-open breaker holds until released, so no time can honestly be given and its 503 carries
    no Retry-After (RFC 9110 makes the field optional). Any number would be invented: too short and
    well-behaved clients come back on that schedule to be refused again, for as long as the breaker
    is held (the open period it used to send, 1 s for the database, is exactly that); too long and
    they stay away after the release. Without it, clients fall back on their own backoff.
    """
    return None if permit.state is State.FORCED_OPEN else permit.retry_after


class KnownOpen(NamedTuple):
    """A breaker this process knows is open, as clients are told."""

    retry_after: float | None  # seconds it surely stays open; None: forced open until released


def open_problem(name: str, retry_after: float | None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Return the detail, headers and extra members of the 503 that refuses a call to breaker ``name``."""
    if retry_after is None:
        detail = f"The {name} circuit breaker is forced open: held until an operator releases it."
        return detail, {"X-Circuit-Breaker-State": "open"}, {"breaker": name, "forced": True}
    seconds = max(1, math.ceil(retry_after))
    detail = f"The {name} circuit breaker is open; retry in {seconds} s."
    return detail, {"Retry-After": str(seconds), "X-Circuit-Breaker-State": "open"}, {"breaker": name}


class BreakerOpen(ApplicationError):
    """The breaker is open: the protected call was not attempted."""

    status_code = 503
    slug = "temporary-reduced-capacity"
    title = "Service temporarily unavailable"

    def __init__(self, name: str, retry_after: float | None) -> None:
        detail, headers, extra = open_problem(name, retry_after)
        super().__init__(detail, headers=headers, **extra)
        self.name = name
        # Whole seconds clients are told to wait; None while forced open (no Retry-After is sent).
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))


def announce(transitions: list[Transition]) -> None:
    """Log, count and signal each transition."""
    for t in transitions:
        breaker_transitions.labels(t.name, str(t.from_state), str(t.to_state)).inc()
        log.warning(
            "circuit breaker %s: %s -> %s",
            t.name,
            t.from_state,
            t.to_state,
            extra={
                "event": "breaker_transition",
                "breaker": t.name,
                "from_state": str(t.from_state),
                "to_state": str(t.to_state),
                "generation": t.generation,
            },
        )
        breaker_state_changed.send(
            sender=Transition,
            name=t.name,
            from_state=t.from_state,
            to_state=t.to_state,
            generation=t.generation,
            at=t.at,
        )


class Call:
    """One admitted call: report its outcome exactly once."""

    __slots__ = ("rule", "permit", "fallback", "started", "runtime")

    def __init__(self, runtime: Runtime, rule: BreakerRule, permit: Permit, fallback: bool) -> None:
        self.runtime = runtime
        self.rule = rule
        self.permit = permit
        self.fallback = fallback
        self.started = time.perf_counter()

    def done(self, *, success: bool) -> None:
        """Record the outcome in the store that admitted the call."""
        cfg, generation, state = self.rule.config, self.permit.generation, self.permit.state
        try:
            if self.fallback:
                _, transitions = self.runtime.breaker_fallback.record(cfg, generation, success)
            elif state is State.FORCED_CLOSED:
                return  # held by an operator: outcomes count for nothing
            elif success and state is State.CLOSED:
                self.runtime.breaker_successes.success(cfg, generation)  # reported in a batch (outcomes.py)
                return
            else:
                transitions = self.runtime.breaker_successes.record(cfg, generation, success)
        except StoreUnavailable as e:
            self.runtime.store_failed("breaker_record", e, "record", [(BREAKER, self.rule.name)])
            return
        announce(transitions)

    def done_with_status(self, status: int) -> bool:
        """Record a response's outcome; return True if it counted as a failure."""
        failed = self.rule.is_failure(status, time.perf_counter() - self.started)
        self.done(success=not failed)
        return failed


def known_open(runtime: Runtime, name: str) -> KnownOpen | None:
    """Return what this process knows, without asking, of breaker ``name`` being open, or None."""
    known = runtime.known_refusals()
    found = known.open_breaker(name) if known is not None else None
    if found is None:
        return None
    left, forced = found
    return KnownOpen(None if forced else left)


def remember_refusal(runtime: Runtime, name: str, permit: Permit, asked_at: float) -> None:
    """Remember a refusal by the shared store of an open breaker (perf_counter() ``asked_at``: before asking)."""
    if permit.state in (State.OPEN, State.FORCED_OPEN):
        known = runtime.known_refusals()
        if known is not None:
            known.note(name, permit.retry_after, asked_at, forced=permit.state is State.FORCED_OPEN)


def admit(runtime: Runtime, rule: BreakerRule) -> Call:
    """Ask the breaker for a permit; raise BreakerOpen when it rejects the call."""
    known = known_open(runtime, rule.name)
    if known is not None:
        breaker_rejections.labels(rule.name).inc()
        raise BreakerOpen(rule.name, known.retry_after)
    asked_at = time.perf_counter()
    store, fallback = runtime.breaker_store()
    try:
        permit, transitions = store.allow(rule.config)
    except StoreUnavailable as e:
        runtime.store_failed("breaker_allow", e, "admit", [(BREAKER, rule.name)])
        store, fallback = runtime.breaker_fallback, True
        permit, transitions = store.allow(rule.config)
    announce(transitions)
    if not permit.allowed:
        breaker_rejections.labels(rule.name).inc()
        if not fallback:
            remember_refusal(runtime, rule.name, permit, asked_at)
        raise BreakerOpen(rule.name, client_retry_after(permit))
    return Call(runtime, rule, permit, fallback)


def _counts_as_failure(rule: BreakerRule, exc: BaseException) -> bool:
    """Return True unless the exception is a client error (4xx) the policy does not list as a failure.

    A page past the end or a missing object raised inside the block says nothing about the protected
    dependency; counting it would let any client open the breaker for everyone.
    """
    status = 404 if isinstance(exc, Http404) else getattr(exc, "status_code", None)
    if not isinstance(status, int) or not 400 <= status < 500:
        return True
    return status in rule.failure_statuses


class breaker(ContextDecorator):  # noqa: N801 - reads as a keyword: `with breaker("search"):`
    """Protect a block or function with the breaker policy of that name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: list[Call | None] = []

    def _recreate_cm(self) -> breaker:
        # Used as a decorator, each call gets its own guard: threads must not share one stack.
        return type(self)(self.name)

    def __enter__(self) -> breaker:
        runtime = get_runtime()
        rule = runtime.snapshot().breakers_by_name.get(self.name)
        guarded = rule is not None and self.name not in held_by_request.get()
        self._calls.append(admit(runtime, rule) if guarded and rule is not None else None)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        call = self._calls.pop()
        if call is None:
            return
        if exc is not None and _counts_as_failure(call.rule, exc):
            call.done(success=False)
            return
        elapsed = time.perf_counter() - call.started
        slow = call.rule.slow_call_seconds
        call.done(success=not (slow is not None and elapsed > slow))
