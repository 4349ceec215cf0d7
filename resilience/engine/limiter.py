"""Decide rate limits: the contract, the rate grammar and the types every limiter store shares.

The contract in full: docs/resilience.md#rate-limits-the-contract-every-limiter-store-implements.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import NamedTuple, Protocol

# Bounds of every rate-limit number staff can save. The model validators, the admin form, the
# CHECK constraints, validate() below and the Lua scripts (stores/redis_limiter.py hands them these
# values) all read them from here; beyond them a policy is a typo, not a limit.
MAX_LIMIT = 1_000_000_000  # requests per period
MAX_PERIOD = 366 * 86_400  # one (leap) year, in seconds
# A sliding log stores one entry per admitted request: a sliding-window limit is capped here.
SLIDING_LOG_MAX = 100_000
# A token bucket's burst is at most MAX_LIMIT and refills in burst * period / limit seconds, which
# is capped here: a bucket that takes longer than a year to refill is a typo too.
MAX_BURST = MAX_LIMIT
MAX_CAPACITY_SECONDS = MAX_PERIOD
# Priorities only order policies (and their header fields); a range keeps them ordinary integers.
MIN_PRIORITY, MAX_PRIORITY = -10_000, 10_000
# Float noise allowance for GCRA comparisons, in microseconds: a thousandth of the clock's
# resolution, so it can only ever rescue a request that exact arithmetic admits.
GCRA_SLACK_US = 0.001
MICROS = 1_000_000

_UNITS: dict[str, int] = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3_600),
    **dict.fromkeys(("d", "day", "days"), 86_400),
    **dict.fromkeys(("w", "wk", "week", "weeks"), 604_800),
}
# ASCII digits only: str.isdigit and \d also accept other scripts' digits.
_RATE_RE = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)?\s*([A-Za-z]+)?\s*")


class Algorithm(StrEnum):
    """Name the limiting algorithms; the values are what stores and policies persist."""

    TOKEN_BUCKET = "token_bucket"
    SLIDING_WINDOW = "sliding_window"
    FIXED_WINDOW = "fixed_window"


class Rate(NamedTuple):
    """Hold a parsed rate: ``limit`` requests per ``period`` seconds."""

    limit: int
    period: int


class LimitSpec(NamedTuple):
    """Describe one limit to decide: where its state lives and what it allows."""

    key: str  # full storage key, built by the caller, e.g. "rl:{7:1.2.3.4}"
    algorithm: Algorithm
    limit: int  # requests per period; 0 denies everything
    period: int  # seconds
    burst: int | None = None  # token bucket only: capacity; None means limit
    enforce: bool = True  # False = dry run: counted and reported, never blocks


class Decision(NamedTuple):
    """Report one spec's verdict in the terms of the RateLimit header fields."""

    allowed: bool  # would this spec admit (for a dry-run spec: what it WOULD do)
    limit: int  # quota for RateLimit-Policy q= (the burst for a token bucket)
    remaining: int  # requests left now, >= 0 (RateLimit r=)
    reset_after: float  # seconds until the quota is fully restored (RateLimit t=), >= 0
    retry_after: float  # seconds until one more request would be admitted; 0.0 when allowed


class HitResult(NamedTuple):
    """Report a whole hit: per-spec decisions, the verdict and the policy version."""

    decisions: list[Decision]  # same order as the specs
    allowed: bool  # False iff some enforcing spec denied
    version: int  # policy-version counter as the store saw it during this hit


class StoreUnavailable(Exception):
    """Signal that a store could not decide, so the caller can fail open or closed."""


class StoreDataError(StoreUnavailable):
    """Signal that the store answered but refused one operation (a script or data error).

    The store itself is up: callers treat the operation like a store failure (each policy's rule
    for store failures applies) without giving up the store for other operations.
    """


class LimiterStore(Protocol):
    """Define what the middleware and services need from a limiter store."""

    def hit(self, specs: Sequence[LimitSpec], cost: int = 1, now: float | None = None) -> HitResult:
        """Decide and consume atomically; see the module docstring for the contract."""
        ...

    def test(self, specs: Sequence[LimitSpec], now: float | None = None) -> list[Decision]:
        """Return the decisions a hit of cost 1 would get, consuming nothing."""
        ...

    def reset(self, keys: Iterable[str]) -> int:
        """Delete the state of ``keys`` and return how many existed."""
        ...

    def bump_version(self) -> int:
        """Increment the policy-version counter and return its new value."""
        ...

    def version(self) -> int:
        """Return the policy-version counter (0 if never bumped)."""
        ...


def parse_rate(text: str) -> Rate:
    """Return the Rate described by ``text`` such as "100/minute", "5/10m" or "100/60"."""
    if not isinstance(text, str):
        raise ValueError(f"rate must be a string like '100/minute', not {type(text).__name__}")
    match = _RATE_RE.fullmatch(text)
    if match is None or (match[2] is None and match[3] is None):
        raise ValueError(f"invalid rate {text!r}: expected '<count>/<period>', e.g. '100/minute', '5/10s', '100/60'")
    limit = int(match[1])
    multiplier = 1 if match[2] is None else int(match[2])
    unit = 1
    if match[3] is not None:
        try:
            unit = _UNITS[match[3].lower()]
        except KeyError:
            raise ValueError(f"invalid rate {text!r}: unknown unit {match[3]!r} (use s, m, h, d or w)") from None
    period = multiplier * unit
    if limit > MAX_LIMIT:
        raise ValueError(f"invalid rate {text!r}: count must be at most {MAX_LIMIT}")
    if period < 1:
        raise ValueError(f"invalid rate {text!r}: period must be at least 1 second")
    if period > MAX_PERIOD:
        raise ValueError(f"invalid rate {text!r}: period must be at most {MAX_PERIOD} seconds")
    return Rate(limit, period)


def validate(specs: Sequence[LimitSpec], cost: int) -> list[LimitSpec]:
    """Return ``specs`` with algorithms coerced, or raise ValueError describing the first bad one."""
    if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= MAX_LIMIT:
        raise ValueError(f"cost must be an integer between 1 and {MAX_LIMIT}, got {cost!r}")
    checked: list[LimitSpec] = []
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec.key, str) or not spec.key:
            raise ValueError(f"spec key must be a non-empty string: {spec!r}")
        if spec.key in seen:
            # Specs are read before any is written, so two specs on one key would undercount.
            raise ValueError(f"spec key {spec.key!r} appears twice in one hit")
        seen.add(spec.key)
        try:
            algorithm = Algorithm(spec.algorithm)
        except ValueError:
            raise ValueError(f"unknown algorithm {spec.algorithm!r} for {spec.key!r}") from None
        if not _is_int_between(spec.limit, 0, MAX_LIMIT):
            raise ValueError(f"limit must be an integer in [0, {MAX_LIMIT}]: {spec!r}")
        if not _is_int_between(spec.period, 1, MAX_PERIOD):
            raise ValueError(f"period must be an integer number of seconds in [1, {MAX_PERIOD}]: {spec!r}")
        if spec.burst is not None and not _is_int_between(spec.burst, 1, MAX_BURST):
            raise ValueError(f"burst must be None or an integer in [1, {MAX_BURST}]: {spec!r}")
        if algorithm is Algorithm.SLIDING_WINDOW and spec.limit > SLIDING_LOG_MAX:
            raise ValueError(f"limit of a sliding window must be at most {SLIDING_LOG_MAX}: {spec!r}")
        if algorithm is Algorithm.TOKEN_BUCKET and not capacity_fits(spec.limit, spec.period, spec.burst):
            raise ValueError(f"burst must refill within {MAX_CAPACITY_SECONDS} s (burst * period / limit): {spec!r}")
        checked.append(spec._replace(algorithm=algorithm, enforce=bool(spec.enforce)))
    return checked


def capacity_fits(limit: int, period: int, burst: int | None) -> bool:
    """Return True if a token bucket's burst refills within MAX_CAPACITY_SECONDS (a zero limit has none)."""
    # Compared as integers (burst * period <= MAX_CAPACITY_SECONDS * limit), as the CHECK constraint does.
    return limit == 0 or (limit if burst is None else burst) * period <= MAX_CAPACITY_SECONDS * limit


def max_burst(limit: int, period: int) -> int:
    """Return the largest burst a token bucket of limit per period may have."""
    return max(1, min(MAX_BURST, MAX_CAPACITY_SECONDS * limit // period)) if limit > 0 else MAX_BURST


def refill_seconds(quota: int, limit: int, period: int) -> int:
    """Return the whole seconds a token bucket of ``limit`` per ``period`` takes to refill ``quota`` tokens.

    This is the ``w`` its RateLimit-Policy states next to ``q`` = the burst; a bucket that never
    refills (limit 0) states its period.
    """
    if limit <= 0:
        return period
    return max(1, -(-quota * period // limit))  # integer ceiling: no float rounding on large numbers


def quota_window(algorithm: str, limit: int, period: int, burst: int | None) -> tuple[int, int]:
    """Return the (q, w) a policy's RateLimit-Policy states: a token bucket's burst and its refill time."""
    if algorithm != Algorithm.TOKEN_BUCKET or limit <= 0:
        return limit, period
    quota = limit if burst is None else burst
    return quota, refill_seconds(quota, limit, period)


def to_micros(now: float) -> int:
    """Return ``now`` (seconds since the epoch) as whole microseconds."""
    if not math.isfinite(now) or now < 0:
        raise ValueError(f"now must be a finite, non-negative timestamp, got {now!r}")
    return round(now * MICROS)


def decision_from_micros(allowed: bool, limit: int, remaining: int, reset_us: int, retry_us: int) -> Decision:
    """Return a Decision from the integer-microsecond values both stores compute."""
    return Decision(
        allowed=allowed,
        limit=int(limit),
        remaining=max(int(remaining), 0),
        reset_after=max(int(reset_us), 0) / MICROS,
        retry_after=0.0 if allowed else max(int(retry_us), 0) / MICROS,
    )


def _is_int_between(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
