"""Keep rate-limit state in this process: the embedded default and the fallback when Redis is down.

This is the same algorithm as ``resilience/stores/lua/limiter_lib.lua``, step for step and with the same
float operations, so both stores return identical decisions for identical inputs; change them
together.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from resilience.engine.limiter import (
    GCRA_SLACK_US,
    MICROS,
    Algorithm,
    Decision,
    HitResult,
    LimitSpec,
    decision_from_micros,
    to_micros,
    validate,
)

# The fallback must not become the leak: past this many keys the least recently written go first.
DEFAULT_MAX_KEYS = 100_000
# Expired entries are swept after this many writes, or after as many writes as keys survived the
# last sweep if that is more, which keeps the sweep's cost amortised O(1) per write.
_SWEEP_EVERY = 1_024


@dataclass(slots=True)
class _Entry:
    algorithm: Algorithm
    # token bucket: (TAT whole us, TAT fraction in 1e-9 us, last write us); fixed window:
    # (start us, count); sliding window: sorted list of admission timestamps (us), one per unit of cost.
    value: tuple[int, ...] | list[int]
    expires: int  # us; the state cannot affect any decision from this instant on


@dataclass(slots=True)
class _Peek:
    spec: LimitSpec
    cost: int
    entry: _Entry | None
    allowed: bool = False
    retry: int = 0
    # token bucket
    t: float = 0.0
    tau: float = 0.0
    cur: float = 0.0
    new: float = 0.0
    # windows
    count: int = 0
    start: int = 0
    left: int = 0
    newest: int | None = None
    low: int = 0
    first: int = 0  # index of the first in-window entry of a sliding log
    log: list[int] = field(default_factory=list)


def _expiry_ms(us: float) -> int:
    """Return the expiry, in whole ms rounded up, that the Lua script sets for ``us`` of state."""
    return max(math.ceil(us / 1000), 1)


class MemoryLimiterStore:
    """Decide limits for this process only, behind one lock.

    Tradeoff: limits are per process, so N workers admit up to N times a limit; that is the price of
    degrading gracefully instead of failing every request while Redis is away.
    """

    def __init__(self, clock: Callable[[], float] = time.time, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._version = 0
        self._writes_since_sweep = 0
        self._sweep_after = _SWEEP_EVERY

    def hit(self, specs: Sequence[LimitSpec], cost: int = 1, now: float | None = None) -> HitResult:
        """Decide ``specs`` atomically and consume ``cost`` if the request is admitted."""
        checked = validate(specs, cost)
        with self._lock:
            decisions, admitted = self._decide(checked, cost, self._now(now), consume=True)
            return HitResult(decisions=decisions, allowed=admitted, version=self._version)

    def test(self, specs: Sequence[LimitSpec], now: float | None = None) -> list[Decision]:
        """Return the decisions a hit of cost 1 would get, consuming nothing."""
        checked = validate(specs, 1)
        with self._lock:
            return self._decide(checked, 1, self._now(now), consume=False)[0]

    def reset(self, keys: Iterable[str]) -> int:
        """Delete the state of ``keys`` and return how many existed."""
        with self._lock:
            now = to_micros(self.clock())
            deleted = 0
            for key in keys:
                entry = self._entries.pop(key, None)
                if entry is not None and entry.expires > now:
                    deleted += 1
            return deleted

    def bump_version(self) -> int:
        """Increment the policy-version counter and return its new value."""
        with self._lock:
            self._version += 1
            return self._version

    def version(self) -> int:
        """Return the policy-version counter (0 if never bumped)."""
        return self._version

    def __len__(self) -> int:
        """Return how many keys hold state, expired ones not yet swept included."""
        return len(self._entries)

    def _now(self, now: float | None) -> int:
        return to_micros(self.clock() if now is None else now)

    def _decide(self, specs: list[LimitSpec], cost: int, now: int, *, consume: bool) -> tuple[list[Decision], bool]:
        peeks: list[_Peek] = []
        admitted = True
        for spec in specs:
            peek = _Peek(spec=spec, cost=cost, entry=self._read(spec, now))
            if spec.limit <= 0:
                peek.retry = spec.period * MICROS
            elif spec.algorithm is Algorithm.TOKEN_BUCKET:
                _gcra_peek(now, peek)
            elif spec.algorithm is Algorithm.FIXED_WINDOW:
                _fixed_peek(now, peek)
            else:
                _sliding_peek(now, peek)
            peeks.append(peek)
            if spec.enforce and not peek.allowed:
                admitted = False

        decisions = []
        for peek in peeks:
            spec = peek.spec
            consumed = consume and admitted and peek.allowed
            quota, remaining, reset = spec.limit, 0, 0
            if spec.limit <= 0:
                reset = spec.period * MICROS
            elif spec.algorithm is Algorithm.TOKEN_BUCKET:
                if consumed:
                    self._write(spec, now, _gcra_commit(now, peek))
                quota = _burst(spec)
                remaining, reset = _gcra_report(peek, consumed)
            elif spec.algorithm is Algorithm.FIXED_WINDOW:
                if consumed:
                    self._write(spec, now, _fixed_commit(now, peek))
                remaining, reset = _fixed_report(peek, consumed)
            else:
                if consumed:
                    self._write(spec, now, _sliding_commit(now, peek))
                remaining, reset = _sliding_report(now, peek, consumed)
            decisions.append(decision_from_micros(peek.allowed, quota, remaining, reset, peek.retry))
        return decisions, admitted

    def _read(self, spec: LimitSpec, now: int) -> _Entry | None:
        entry = self._entries.get(spec.key)
        # Another algorithm's state (the policy switched algorithm) reads as empty, as in Redis.
        if entry is None or entry.expires <= now or entry.algorithm is not spec.algorithm:
            return None
        return entry

    def _write(self, spec: LimitSpec, now: int, entry: _Entry) -> None:
        self._entries[spec.key] = entry
        self._entries.move_to_end(spec.key)
        self._writes_since_sweep += 1
        if self._writes_since_sweep >= self._sweep_after:
            for key in [k for k, e in self._entries.items() if e.expires <= now]:
                del self._entries[key]
            self._writes_since_sweep = 0
            self._sweep_after = max(_SWEEP_EVERY, len(self._entries))
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)


def _burst(spec: LimitSpec) -> int:
    return spec.limit if spec.burst is None else spec.burst


def _gcra_peek(now: int, peek: _Peek) -> None:
    spec, cost = peek.spec, peek.cost
    burst = _burst(spec)
    t = spec.period * 1e6 / spec.limit
    tau = burst * t
    diff = 0.0
    if peek.entry is not None:
        whole, nano, written = peek.entry.value
        diff = (whole - now) + nano / 1e9
        # A shrunken capacity applies from the last write, so nobody waits longer than it refills.
        diff = min(diff, (written - now) + tau)
    diff = min(max(diff, 0.0), tau)
    peek.t, peek.tau, peek.cur = t, tau, diff
    peek.new = diff + cost * t
    peek.allowed = peek.new <= tau + GCRA_SLACK_US
    if not peek.allowed:
        peek.retry = spec.period * MICROS if cost > burst else math.ceil(peek.new - tau - GCRA_SLACK_US)


def _gcra_report(peek: _Peek, consumed: bool) -> tuple[int, int]:
    after = peek.new if consumed else peek.cur
    remaining = min(math.floor((peek.tau + GCRA_SLACK_US - after) / peek.t), _burst(peek.spec))
    return remaining, math.ceil(after - GCRA_SLACK_US)


def _gcra_commit(now: int, peek: _Peek) -> _Entry:
    whole = math.floor(peek.new)
    nano = math.floor((peek.new - whole) * 1e9 + 0.5)
    if nano >= 1_000_000_000:
        whole, nano = whole + 1, 0
    return _Entry(Algorithm.TOKEN_BUCKET, (now + whole, nano, now), now + _expiry_ms(peek.new) * 1000)


def _fixed_peek(now: int, peek: _Peek) -> None:
    spec, cost = peek.spec, peek.cost
    period = spec.period * MICROS
    start = now // period * period
    count = 0
    if peek.entry is not None:
        stored_start, stored_count = peek.entry.value
        if stored_start == start:
            count = stored_count
    peek.count, peek.start, peek.left = count, start, start + period - now
    peek.allowed = count + cost <= spec.limit
    if not peek.allowed:
        peek.retry = period if cost > spec.limit else peek.left


def _fixed_report(peek: _Peek, consumed: bool) -> tuple[int, int]:
    after = peek.count + peek.cost if consumed else peek.count
    return peek.spec.limit - after, peek.left if after > 0 else 0


def _fixed_commit(now: int, peek: _Peek) -> _Entry:
    return _Entry(Algorithm.FIXED_WINDOW, (peek.start, peek.count + peek.cost), now + _expiry_ms(peek.left) * 1000)


def _sliding_peek(now: int, peek: _Peek) -> None:
    spec, cost = peek.spec, peek.cost
    period = spec.period * MICROS
    log: list[int] = peek.entry.value if peek.entry is not None else []  # type: ignore[assignment]  # a sliding log's value is its list
    # The window is (now - period, now]; later entries (a clock that stepped back) count too.
    peek.low = now - period
    peek.first = bisect.bisect_right(log, peek.low)
    peek.log = log
    peek.count = len(log) - peek.first
    peek.newest = log[-1] if peek.count > 0 else None
    peek.allowed = peek.count + cost <= spec.limit
    if not peek.allowed:
        if cost > spec.limit:
            peek.retry = period
        else:
            # Admission needs count + cost - limit of the oldest entries to have left the window.
            peek.retry = log[peek.first + peek.count + cost - spec.limit - 1] + period - now


def _sliding_newest(now: int, peek: _Peek, consumed: bool) -> int | None:
    if consumed and (peek.newest is None or peek.newest < now):
        return now
    return peek.newest


def _sliding_report(now: int, peek: _Peek, consumed: bool) -> tuple[int, int]:
    after = peek.count + peek.cost if consumed else peek.count
    newest = _sliding_newest(now, peek, consumed)
    reset = newest + peek.spec.period * MICROS - now if after > 0 and newest is not None else 0
    return peek.spec.limit - after, reset


def _sliding_commit(now: int, peek: _Peek) -> _Entry:
    # The log is trimmed and extended in place: copying it would cost O(limit) per hit.
    log = peek.log
    del log[: peek.first]
    if not log or log[-1] <= now:
        log.extend([now] * peek.cost)
    else:
        for _ in range(peek.cost):
            bisect.insort(log, now)
    newest = now if peek.newest is None else max(peek.newest, now)
    period = peek.spec.period * MICROS
    return _Entry(Algorithm.SLIDING_WINDOW, log, now + _expiry_ms(newest + period - now) * 1000)
