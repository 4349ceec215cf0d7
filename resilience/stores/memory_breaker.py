"""In-process breaker store: the embedded default and the fallback when Redis is down.

State lives in this process only, so with N workers each one trips on its own (degraded, but every
worker still protects itself). The semantics are those of ``resilience.engine.breaker``; this class only adds
the lock and the clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from resilience.engine.breaker import (
    BreakerConfig,
    BreakerData,
    Permit,
    Snapshot,
    State,
    Transition,
    breaker_allow,
    breaker_force,
    breaker_record,
    breaker_reset,
    breaker_snapshot,
)


class MemoryBreakerStore:
    """Keep breaker state in a dict guarded by one lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # One lock for all breakers: each step is a few dict and deque operations, far cheaper than
        # the protected call, and the lock is never held while that call runs.
        self._lock = threading.Lock()
        self._data: dict[str, BreakerData] = {}

    def _now(self, now: float | None) -> float:
        """Return ``now`` or the store's clock."""
        return self._clock() if now is None else now

    def _get(self, name: str) -> BreakerData:
        """Return the state of ``name``, creating a fresh CLOSED one; call with the lock held."""
        data = self._data.get(name)
        if data is None:
            data = self._data[name] = BreakerData()
        return data

    def allow(self, cfg: BreakerConfig, now: float | None = None) -> tuple[Permit, list[Transition]]:
        """Admit or reject one call; return the permit and any transitions applied."""
        cfg.validate()
        at = self._now(now)
        with self._lock:
            return breaker_allow(self._get(cfg.name), cfg, at)

    def record(
        self, cfg: BreakerConfig, generation: int, success: bool, now: float | None = None
    ) -> tuple[State, list[Transition]]:
        """Report the outcome of a call admitted with ``generation``; return the state after."""
        cfg.validate()
        at = self._now(now)
        with self._lock:
            return breaker_record(self._get(cfg.name), cfg, generation, success, at)

    def force(self, name: str, state: State | None, now: float | None = None) -> list[Transition]:
        """Hold ``name`` FORCED_OPEN / FORCED_CLOSED, or release it to CLOSED with None."""
        at = self._now(now)
        with self._lock:
            return breaker_force(self._get(name), name, state, at)

    def reset(self, name: str, now: float | None = None) -> list[Transition]:
        """Put ``name`` back to CLOSED with counters cleared and a new generation."""
        at = self._now(now)
        with self._lock:
            return breaker_reset(self._get(name), name, at)

    def snapshot(self, cfg: BreakerConfig, now: float | None = None) -> Snapshot:
        """Return a read-only view of ``cfg.name``."""
        cfg.validate()
        at = self._now(now)
        with self._lock:
            data = self._data.get(cfg.name) or BreakerData()
            return breaker_snapshot(data, cfg, at)

    def snapshots(self, cfgs: Iterable[BreakerConfig], now: float | None = None) -> list[Snapshot]:
        """Return one snapshot per config, all taken at the same instant."""
        at = self._now(now)
        return [self.snapshot(cfg, at) for cfg in cfgs]
