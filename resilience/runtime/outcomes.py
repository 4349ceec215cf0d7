"""Successes of calls a closed breaker admitted, reported to Redis in batches rather than one round trip each.

A worker counts them in process per breaker and generation, and reports each count in one script
call every FLUSH_SECONDS, and at once, before the outcome, when a call fails or is a half-open trial.
The script counts a batch exactly as it would count the same successes recorded one by one at that
moment (a success trips a breaker only by bringing its window up to the minimum calls), so a
failure is judged on the same window. What the fleet's other workers counted reaches Redis up to
FLUSH_SECONDS late: a rate judged over a time window may miss that much of their successes. A
worker that dies loses what it had not reported: successes, never failures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from resilience.engine.breaker import BreakerConfig, State, StoreUnavailable, Transition
from resilience.runtime.periodic import Periodic

# How long a success may wait in process before it reaches Redis (seconds).
FLUSH_SECONDS = 0.1


class RecordingStore(Protocol):
    def record(
        self, cfg: BreakerConfig, generation: int, success: bool | None, now: float | None = None, earlier: int = 0
    ) -> tuple[State, list[Transition]]: ...


class SuccessBatch:
    """Count successes per (breaker, generation) and report them in the background or before a failure."""

    def __init__(
        self,
        store: Callable[[], RecordingStore],
        failed: Callable[[str, StoreUnavailable, str], None],
        announce: Callable[[list[Transition]], None],
    ) -> None:
        self._store = store
        self._failed = failed  # (operation, error, breaker name): the runtime's store-failure rule
        self._announce = announce
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], tuple[BreakerConfig, int]] = {}
        self._reporter = Periodic("breaker-successes", FLUSH_SECONDS, self.flush)

    def success(self, cfg: BreakerConfig, generation: int) -> None:
        """Count one success of a call the closed breaker ``cfg`` admitted with ``generation``."""
        key = (cfg.name, generation)
        with self._lock:
            if not self._reporter.running_here() and self._reporter.start():
                # First here, or a process forked from one that counted: what it counted is its own to report.
                self._pending = {}
            _, count = self._pending.get(key, (cfg, 0))
            self._pending[key] = (cfg, count + 1)

    def record(self, cfg: BreakerConfig, generation: int, success: bool) -> list[Transition]:
        """Report one outcome at once, with the successes still waiting for the same breaker and generation."""
        with self._lock:
            _, earlier = self._pending.pop((cfg.name, generation), (cfg, 0))
        _, transitions = self._store().record(cfg, generation, success, earlier=earlier)
        return transitions

    def flush(self) -> None:
        """Report every waiting success now: one round trip per breaker and generation that has some."""
        with self._lock:
            pending, self._pending = self._pending, {}
        store = self._store()
        for (name, generation), (cfg, count) in pending.items():
            try:
                _, transitions = store.record(cfg, generation, None, earlier=count)
            except StoreUnavailable as e:
                # Successes only: losing them can delay a trip by one batch, never cause one.
                self._failed("breaker_record", e, name)
                return
            self._announce(transitions)

    def close(self) -> None:
        """Report what is waiting and stop the background thread."""
        self._reporter.stop(wait=1.0)
        self.flush()
