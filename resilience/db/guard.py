"""The database breaker: once PostgreSQL is known down, a request that needs it fails at once.

The contract in full: docs/resilience.md#the-database-breaker.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from django.db import OperationalError

from resilience.engine.breaker import BreakerConfig, Permit, State, StoreUnavailable, Transition
from resilience.http.guards import announce, client_retry_after, known_open, remember_refusal
from resilience.ops.metrics import breaker_rejections
from resilience.runtime import Runtime, get_runtime

NAME = "database"

# Three connection failures in a row open it for one second; then one trial connection, made
# by whichever request (or readiness probe) comes first, decides for the whole fleet.
DEFAULT_CONFIG = BreakerConfig(
    name=NAME,
    failure_threshold=3,
    failure_rate=0.0,
    window_size=20,
    window_kind="count",
    minimum_calls=10,
    open_seconds=1.0,
    half_open_max_calls=1,
)

# How long a worker trusts "closed" without asking, and reports successes at most once (seconds).
SYNC_SECONDS = 0.1


class DatabaseUnavailable(OperationalError):
    """PostgreSQL is known down: the database breaker refused a connection without trying one."""

    def __init__(self, retry_after: float | None) -> None:
        # Whole seconds to tell clients; None while an operator holds the breaker open (no Retry-After).
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))
        if self.retry_after is None:
            super().__init__(f"the {NAME} circuit breaker is forced open until an operator releases it")
        else:
            super().__init__(f"the {NAME} circuit breaker is open; retry in {self.retry_after} s")


class Ticket(NamedTuple):
    """The breaker's permit for one connection, and the store that issued it."""

    permit: Permit
    fallback: bool  # issued by this process's fallback store (Redis was unavailable)


class _Closed(NamedTuple):
    """What a worker remembers of the last "closed" answer."""

    ticket: Ticket
    config: BreakerConfig
    until: float  # time.monotonic() until which "closed" is trusted without asking


def database_config(runtime: Runtime | None = None) -> BreakerConfig:
    """Return the breaker's configuration: its policy row as last loaded, else the built-in default."""
    # loaded(), not snapshot(): this runs while the policies themselves are being loaded.
    policies = (runtime or get_runtime()).loaded()
    rule = policies.breakers_by_name.get(NAME) if policies is not None else None
    return rule.config if rule is not None else DEFAULT_CONFIG


class DatabaseGuard:
    """Ask the database breaker before taking a connection; tell it how the connection fared.

    One per process. Its fields are read and replaced without a lock: a race costs at most one
    extra round trip or one success left unreported.
    """

    def __init__(self) -> None:
        self._closed: _Closed | None = None
        self._success_due = 0.0  # time.monotonic() from which the next success is reported
        self._owes_success = False  # this process reported a failure since its last success
        self._open_until = 0.0  # time.monotonic() until which this process saw it open (for hints)
        self._forced = False  # what it saw was an operator holding it open

    def acquire(self) -> Ticket:
        """Return a ticket for one connection; raise DatabaseUnavailable while the breaker refuses."""
        runtime = get_runtime()
        config = database_config(runtime)
        known = known_open(runtime, NAME)
        if known is not None:
            breaker_rejections.labels(NAME).inc()
            raise DatabaseUnavailable(known.retry_after)
        store, fallback = runtime.breaker_store()
        now = time.monotonic()
        closed = self._closed
        if closed is not None and now < closed.until and closed.ticket.fallback == fallback and closed.config == config:
            return closed.ticket
        asked_at = time.perf_counter()
        try:
            permit, transitions = store.allow(config)
        except StoreUnavailable as e:
            runtime.mark_down("breaker_allow", e)
            store, fallback = runtime.breaker_fallback, True
            permit, transitions = store.allow(config)
        announce(transitions)
        if not permit.allowed:
            breaker_rejections.labels(NAME).inc()
            if not fallback:
                remember_refusal(runtime, NAME, permit, asked_at)
            self._closed = None
            retry_after = client_retry_after(permit)
            if permit.state is State.HALF_OPEN:
                # Another request holds the trial: it decides within a connect timeout, not the
                # trial lease the engine reports, so tell clients to come back after an open period.
                retry_after = min(permit.retry_after, config.open_seconds)
            else:
                self._open_until = now + permit.retry_after
                self._forced = retry_after is None
            raise DatabaseUnavailable(retry_after)
        ticket = Ticket(permit, fallback)
        if not permit.trial:
            self._closed = _Closed(ticket, config, now + SYNC_SECONDS)
        return ticket

    def succeeded(self, ticket: Ticket) -> Ticket:
        """Report a connection that worked (sampled while closed); return the ticket to hold from now on."""
        now = time.monotonic()
        if not (ticket.permit.trial or self._owes_success or now >= self._success_due):
            return ticket
        self._success_due = now + SYNC_SECONDS
        self._owes_success = False
        outcome = self._record(ticket, success=True)
        if outcome is None or not ticket.permit.trial:
            return ticket
        state, transitions = outcome
        if state is not State.CLOSED:
            return ticket
        # The trial closed the breaker: the connection it keeps belongs to the closed state now.
        generation = transitions[-1].generation if transitions else ticket.permit.generation
        closed = Ticket(Permit(True, State.CLOSED, generation, 0.0, False), ticket.fallback)
        self._closed = _Closed(closed, database_config(), now + SYNC_SECONDS)
        return closed

    def failed(self, ticket: Ticket) -> None:
        """Report a connection PostgreSQL refused, did not give in time, or lost."""
        self._closed = None
        self._owes_success = True
        asked_at = time.perf_counter()
        outcome = self._record(ticket, success=False)
        if outcome is None or not any(t.to_state is State.OPEN for t in outcome[1]):
            return  # still closed, or opened earlier by another worker: the next acquire() asks
        config = database_config()
        self._open_until = time.monotonic() + config.open_seconds
        self._forced = False
        if not ticket.fallback:
            # This failure opened it: refuse from memory from now on, as a refusal would teach us.
            opened = Permit(False, State.OPEN, ticket.permit.generation, config.open_seconds, False)
            remember_refusal(get_runtime(), NAME, opened, asked_at)

    def seconds_to_half_open(self) -> float | None:
        """Return how long clients should wait before trying again, as this process knows it.

        None while an operator holds the breaker open: no time can be given (see client_retry_after).
        """
        runtime = get_runtime()
        known = known_open(runtime, NAME)
        if known is not None:
            return known.retry_after
        left = self._open_until - time.monotonic()
        if left > 0:
            return None if self._forced else left
        return database_config(runtime).open_seconds

    def forget(self) -> None:
        """Forget what this process learnt about the breaker (after a reset; tests)."""
        self._closed = None
        self._success_due = 0.0
        self._owes_success = False
        self._open_until = 0.0
        self._forced = False

    def _record(self, ticket: Ticket, *, success: bool) -> tuple[State, list[Transition]] | None:
        """Record one outcome in the store that issued the ticket; return None if it is unreachable."""
        runtime = get_runtime()
        store = runtime.breaker_fallback if ticket.fallback else runtime.breaker_shared
        try:
            state, transitions = store.record(database_config(runtime), ticket.permit.generation, success)
        except StoreUnavailable as e:
            runtime.mark_down("breaker_record", e)
            return None
        announce(transitions)
        return state, transitions


guard = DatabaseGuard()
