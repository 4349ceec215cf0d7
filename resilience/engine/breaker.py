"""Circuit-breaker engine: states, config, the state machine and the store contract.

The contract in full: docs/resilience.md#circuit-breakers-the-contract-every-breaker-store-implements.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

# One error type for every store, so callers apply a single fail-open / fail-closed rule.
from resilience.engine.limiter import StoreDataError as StoreDataError
from resilience.engine.limiter import StoreUnavailable as StoreUnavailable

# A lease never shorter than 10 s: a short open period must not expire trials still in flight.
TRIAL_LEASE_FLOOR = 10.0

# Bounds of every breaker number staff can save. The model validators, the admin form, the CHECK
# constraints, BreakerConfig.validate() and the Lua scripts (stores/redis_breaker.py hands them
# these values) all read them from here.
MAX_FAILURE_THRESHOLD = 10_000  # consecutive failures
MAX_COUNT_WINDOW = 10_000  # calls kept in a count window (one list entry each in Redis)
MAX_TIME_WINDOW = 3_600  # seconds in a time window (one bucket per second)
MAX_MINIMUM_CALLS = 1_000_000  # calls the rate rule waits for
MAX_OPEN_SECONDS = 86_400  # a day: longer is an outage to handle by hand (force open)
MAX_HALF_OPEN_CALLS = 1_000  # trial calls admitted when half-open
# Policy bounds the middleware reads (not the state machine): how slow a call may be before it
# counts as failed, and how long a stale copy of a good response is kept.
MAX_SLOW_CALL_MS = 600_000  # ten minutes, far beyond any worker timeout
MAX_STALE_MAX_AGE = 86_400  # a day
# Statuses that may count as failures: error responses only (a 2xx/3xx "failure" would open the
# breaker on healthy traffic).
MIN_FAILURE_STATUS, MAX_FAILURE_STATUS = 400, 599


class State(StrEnum):
    """Name the states a breaker can be in."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"
    FORCED_OPEN = "forced-open"
    FORCED_CLOSED = "forced-closed"


FORCED_STATES = frozenset({State.FORCED_OPEN, State.FORCED_CLOSED})
WINDOW_KINDS = ("count", "time")


class BreakerConfig(NamedTuple):
    """Describe one breaker; every store reads it per call, so edits apply on the next call."""

    name: str
    # Consecutive failures that trip the breaker (0 = rule off).
    failure_threshold: int = 5
    # Failure percentage (0..100) over the rolling window that trips it (0 = rule off).
    failure_rate: float = 0.0
    # Rolling window: the last N calls (window_kind="count") or the last N seconds ("time").
    window_size: int = 20
    window_kind: str = "count"
    # The rate rule applies only once the window holds this many calls.
    minimum_calls: int = 10
    # How long OPEN lasts before HALF_OPEN admits trial calls.
    open_seconds: float = 30.0
    # K: exactly K trial calls are admitted across the cluster; K successes close, any failure re-opens.
    half_open_max_calls: int = 1

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        if not self.name:
            raise ValueError("name: must not be empty")
        if not 0 <= self.failure_threshold <= MAX_FAILURE_THRESHOLD:
            raise ValueError(f"failure_threshold: must be between 0 and {MAX_FAILURE_THRESHOLD}")
        if not 0.0 <= self.failure_rate <= 100.0:
            raise ValueError("failure_rate: must be between 0 and 100")
        if self.window_kind not in WINDOW_KINDS:
            raise ValueError(f"window_kind: must be one of {', '.join(WINDOW_KINDS)}")
        if not 1 <= self.window_size <= max_window(self.window_kind):
            raise ValueError(f"window_size: must be between 1 and {max_window(self.window_kind)}")
        if not 0 <= self.minimum_calls <= MAX_MINIMUM_CALLS:
            raise ValueError(f"minimum_calls: must be between 0 and {MAX_MINIMUM_CALLS}")
        if not (0.0 < self.open_seconds <= MAX_OPEN_SECONDS):
            raise ValueError(f"open_seconds: must be above 0 and at most {MAX_OPEN_SECONDS}")
        if not 1 <= self.half_open_max_calls <= MAX_HALF_OPEN_CALLS:
            raise ValueError(f"half_open_max_calls: must be between 1 and {MAX_HALF_OPEN_CALLS}")


def max_window(kind: str) -> int:
    """Return the largest window of a kind: calls for "count", seconds for "time"."""
    return MAX_TIME_WINDOW if kind == "time" else MAX_COUNT_WINDOW


class Permit(NamedTuple):
    """Answer to allow(): whether the call may run and what to pass back to record()."""

    allowed: bool
    state: State  # state as seen at admission (after the lazy transition)
    generation: int  # pass back to record()
    retry_after: float  # seconds until a call may be admitted again when rejected (0 when allowed)
    trial: bool  # True when admitted as a half-open trial call


class Transition(NamedTuple):
    """One state change, returned so callers can log, signal and count it."""

    name: str
    from_state: State
    to_state: State
    generation: int  # the generation the breaker entered
    at: float  # store clock when the change was applied


class Snapshot(NamedTuple):
    """Read-only view of one breaker for admin pages, metrics and commands."""

    name: str
    state: State
    generation: int
    consecutive_failures: int
    window_calls: int
    window_failures: int
    opened_at: float | None  # time of the last trip while OPEN / HALF_OPEN, else None
    retry_after: float  # what a rejected allow() would say now; 0 if allow() would admit
    forced: bool


class BreakerStore(Protocol):
    """Hold breaker state; see the module docstring for the exact semantics."""

    def allow(self, cfg: BreakerConfig, now: float | None = None) -> tuple[Permit, list[Transition]]:
        """Admit or reject one call, applying the lazy transition first."""
        ...

    def record(
        self, cfg: BreakerConfig, generation: int, success: bool, now: float | None = None
    ) -> tuple[State, list[Transition]]:
        """Report the outcome of a call admitted with that generation; return the state after."""
        ...

    def force(self, name: str, state: State | None, now: float | None = None) -> list[Transition]:
        """Hold the breaker FORCED_OPEN / FORCED_CLOSED, or release it to CLOSED with None."""
        ...

    def reset(self, name: str, now: float | None = None) -> list[Transition]:
        """Put the breaker back to CLOSED with counters cleared and a new generation."""
        ...

    def snapshot(self, cfg: BreakerConfig, now: float | None = None) -> Snapshot:
        """Return a read-only view with pending lazy steps applied to a copy."""
        ...

    def snapshots(self, cfgs: Iterable[BreakerConfig], now: float | None = None) -> list[Snapshot]:
        """Return snapshot() for each config, in order."""
        ...


# --- pure rules (the Lua library mirrors each one) -------------------------------------------------


def effective_minimum_calls(cfg: BreakerConfig) -> int:
    """Return the call count the rate rule waits for, capped at the size of a count window."""
    if cfg.window_kind == "count":
        return min(cfg.minimum_calls, cfg.window_size)
    return cfg.minimum_calls


def ready_to_trip(cfg: BreakerConfig, consecutive_failures: int, window_calls: int, window_failures: int) -> bool:
    """Return True if the consecutive rule or the failure-rate rule fires."""
    if cfg.failure_threshold > 0 and consecutive_failures >= cfg.failure_threshold:
        return True
    # Compare failures * 100 with rate * calls rather than dividing, so Lua and Python agree exactly.
    return (
        cfg.failure_rate > 0
        and window_calls > 0
        and window_calls >= effective_minimum_calls(cfg)
        and window_failures * 100 >= cfg.failure_rate * window_calls
    )


def trial_lease_seconds(cfg: BreakerConfig) -> float:
    """Return how long a half-open batch of trial permits stays reserved."""
    return max(cfg.open_seconds, TRIAL_LEASE_FLOOR)


def window_signature(cfg: BreakerConfig) -> str:
    """Return the tag that says which window layout stored counts belong to."""
    return f"{cfg.window_kind}:{cfg.window_size}"


def open_period_over(state: State, open_until: float, now: float) -> bool:
    """Return True if an OPEN breaker is due to turn HALF_OPEN."""
    return state is State.OPEN and now >= open_until


# --- state kept per breaker --------------------------------------------------------------------------


class RollingWindow:
    """Count calls and failures over the last N calls or the last N seconds."""

    def __init__(self) -> None:
        self.signature = ""
        self.calls = 0
        self.failures = 0
        self.outcomes: deque[bool] = deque()  # count kind: True = failure, oldest first
        self.buckets: dict[int, list[int]] = {}  # time kind: second -> [calls, failures]
        self.low: int | None = None  # time kind: no bucket below this second exists

    def clear(self) -> None:
        """Forget every call."""
        self.signature = ""
        self.calls = 0
        self.failures = 0
        self.outcomes.clear()
        self.buckets.clear()
        self.low = None

    def add(self, cfg: BreakerConfig, now: float, failed: bool) -> None:
        """Count one call, first dropping what fell out of the window."""
        signature = window_signature(cfg)
        if self.signature != signature:
            self.clear()
            self.signature = signature
        if cfg.window_kind == "count":
            self.outcomes.append(failed)
            self.calls += 1
            self.failures += failed
            while self.calls > cfg.window_size:
                self.calls -= 1
                self.failures -= self.outcomes.popleft()
            return
        second = math.floor(now)
        cutoff = second - cfg.window_size + 1
        if self.low is None:
            self.low = cutoff
        elif self.low < cutoff:
            if cutoff - self.low >= cfg.window_size:
                # Every bucket lies in [low, low + size - 1], so all of them are out: drop in one go.
                self.buckets.clear()
                self.calls = self.failures = 0
            else:
                # At most size - 1 steps, and each second is evicted once: amortised O(1) per call.
                for old in range(self.low, cutoff):
                    old_calls, old_failures = self.buckets.pop(old, (0, 0))
                    self.calls -= old_calls
                    self.failures -= old_failures
            self.low = cutoff
        bucket = self.buckets.setdefault(max(second, self.low), [0, 0])
        bucket[0] += 1
        bucket[1] += failed
        self.calls += 1
        self.failures += failed

    def counts(self, cfg: BreakerConfig, now: float) -> tuple[int, int]:
        """Return (calls, failures) in the window at ``now`` without changing anything."""
        if self.signature != window_signature(cfg):
            return 0, 0
        if cfg.window_kind == "count" or self.low is None:
            return self.calls, self.failures
        cutoff = math.floor(now) - cfg.window_size + 1
        if self.low >= cutoff:
            return self.calls, self.failures
        if cutoff - self.low >= cfg.window_size:
            return 0, 0
        calls, failures = self.calls, self.failures
        for old in range(self.low, cutoff):
            old_calls, old_failures = self.buckets.get(old, (0, 0))
            calls -= old_calls
            failures -= old_failures
        return calls, failures


@dataclass
class BreakerData:
    """Hold the mutable state of one breaker, as the Redis hash does field by field."""

    state: State = State.CLOSED
    generation: int = 0
    consecutive_failures: int = 0
    opened_at: float | None = None
    open_until: float = 0.0
    trials_issued: int = 0
    trial_successes: int = 0
    lease_until: float = 0.0
    window: RollingWindow = field(default_factory=RollingWindow)


# --- state machine steps (mutate BreakerData; the memory store runs them under its lock) -------------


def _change(data: BreakerData, to: State) -> None:
    """Enter ``to`` with a new generation and every counter cleared."""
    data.generation += 1
    data.state = to
    data.consecutive_failures = 0
    data.trials_issued = 0
    data.trial_successes = 0
    data.lease_until = 0.0
    data.window.clear()
    if to not in (State.OPEN, State.HALF_OPEN):
        data.opened_at = None
        data.open_until = 0.0


def _move(data: BreakerData, name: str, to: State, now: float, transitions: list[Transition]) -> None:
    """Enter ``to`` and log the transition."""
    transitions.append(Transition(name, data.state, to, data.generation + 1, now))
    _change(data, to)


def _trip(data: BreakerData, cfg: BreakerConfig, now: float, transitions: list[Transition]) -> None:
    """Open the breaker for a fresh open period."""
    _move(data, cfg.name, State.OPEN, now, transitions)
    data.opened_at = now
    data.open_until = now + cfg.open_seconds


def _apply_lazy(data: BreakerData, name: str, now: float, transitions: list[Transition]) -> None:
    """Turn OPEN into HALF_OPEN once the open period is over."""
    if open_period_over(data.state, data.open_until, now):
        _move(data, name, State.HALF_OPEN, now, transitions)


def _release_abandoned_trials(data: BreakerData, now: float) -> None:
    """Start a fresh half-open batch when the current batch's lease has run out."""
    if data.state is State.HALF_OPEN and data.trials_issued > 0 and now >= data.lease_until:
        # New generation so that late outcomes from the abandoned batch are ignored.
        data.generation += 1
        data.trials_issued = 0
        data.trial_successes = 0
        data.lease_until = 0.0


def breaker_allow(data: BreakerData, cfg: BreakerConfig, now: float) -> tuple[Permit, list[Transition]]:
    """Admit or reject one call; see the store contract in the module docstring."""
    transitions: list[Transition] = []
    _apply_lazy(data, cfg.name, now, transitions)
    allowed, trial, retry_after = False, False, 0.0
    if data.state in (State.CLOSED, State.FORCED_CLOSED):
        allowed = True
    elif data.state is State.FORCED_OPEN:
        retry_after = cfg.open_seconds
    elif data.state is State.OPEN:
        retry_after = data.open_until - now
    else:
        _release_abandoned_trials(data, now)
        if data.trials_issued < cfg.half_open_max_calls:
            if data.trials_issued == 0:
                data.lease_until = now + trial_lease_seconds(cfg)
            data.trials_issued += 1
            allowed, trial = True, True
        else:
            retry_after = data.lease_until - now
    return Permit(allowed, data.state, data.generation, retry_after, trial), transitions


def breaker_record(
    data: BreakerData, cfg: BreakerConfig, generation: int, success: bool, now: float
) -> tuple[State, list[Transition]]:
    """Apply the outcome of one admitted call; see the store contract in the module docstring."""
    transitions: list[Transition] = []
    _apply_lazy(data, cfg.name, now, transitions)
    _release_abandoned_trials(data, now)
    if generation != data.generation:
        return data.state, transitions
    if data.state is State.CLOSED:
        data.consecutive_failures = 0 if success else data.consecutive_failures + 1
        data.window.add(cfg, now, not success)
        if ready_to_trip(cfg, data.consecutive_failures, data.window.calls, data.window.failures):
            _trip(data, cfg, now, transitions)
    elif data.state is State.HALF_OPEN:
        if not success:
            _trip(data, cfg, now, transitions)
        else:
            data.trial_successes += 1
            if data.trial_successes >= cfg.half_open_max_calls:
                _move(data, cfg.name, State.CLOSED, now, transitions)
    return data.state, transitions


def breaker_force(data: BreakerData, name: str, state: State | None, now: float) -> list[Transition]:
    """Force or release the breaker; see the store contract in the module docstring."""
    if state is not None and state not in FORCED_STATES:
        raise ValueError(f"force() takes {State.FORCED_OPEN}, {State.FORCED_CLOSED} or None, not {state}")
    transitions: list[Transition] = []
    _apply_lazy(data, name, now, transitions)
    if state is None:
        if data.state in FORCED_STATES:
            _move(data, name, State.CLOSED, now, transitions)
    elif data.state is not state:
        _move(data, name, state, now, transitions)
    return transitions


def breaker_reset(data: BreakerData, name: str, now: float) -> list[Transition]:
    """Put the breaker back to CLOSED; see the store contract in the module docstring."""
    transitions: list[Transition] = []
    _apply_lazy(data, name, now, transitions)
    if data.state is State.CLOSED:
        _change(data, State.CLOSED)
    else:
        _move(data, name, State.CLOSED, now, transitions)
    return transitions


def breaker_snapshot(data: BreakerData, cfg: BreakerConfig, now: float) -> Snapshot:
    """Return the read-only view of ``data`` at ``now``; ``data`` is left untouched."""
    state, generation = data.state, data.generation
    consecutive, trials, lease_until = data.consecutive_failures, data.trials_issued, data.lease_until
    calls, failures = data.window.counts(cfg, now)
    if open_period_over(state, data.open_until, now):
        state, generation = State.HALF_OPEN, generation + 1
        consecutive, trials, calls, failures = 0, 0, 0, 0
    elif state is State.HALF_OPEN and trials > 0 and now >= lease_until:
        generation, trials = generation + 1, 0
    retry_after = 0.0
    if state is State.OPEN:
        retry_after = data.open_until - now
    elif state is State.FORCED_OPEN:
        retry_after = cfg.open_seconds
    elif state is State.HALF_OPEN and trials >= cfg.half_open_max_calls:
        retry_after = lease_until - now
    return Snapshot(
        name=cfg.name,
        state=state,
        generation=generation,
        consecutive_failures=consecutive,
        window_calls=calls,
        window_failures=failures,
        opened_at=data.opened_at,
        retry_after=retry_after,
        forced=state in FORCED_STATES,
    )
