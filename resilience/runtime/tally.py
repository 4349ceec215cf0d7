"""Dashboard counts of rate-limit refusals a worker made from memory, written to Redis in batches.

A refusal decided by Redis is counted by the admission script in the same round trip
(admit_main.lua: the per-minute "<label>:l" counter and the policy's sorted set of limited keys).
A refusal repeated from memory (resilience/runtime/refusals.py) makes no round trip, so it is added here and
written with the same commands, at most once per FLUSH_SECONDS per worker and when the worker
exits. The dashboard's counts are then exact, up to FLUSH_SECONDS late. If Redis cannot take a
batch, the batch is dropped and counted in bookstore_resilience_store_errors_total{operation="stats"}:
the refusals themselves stand, and the metrics counted them in process.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import redis

from resilience.engine.limiter import HitResult, LimitSpec, StoreUnavailable
from resilience.ops.metrics import store_errors
from resilience.stores.boundary import store_call
from resilience.stores.keys import counted_value, stats_key, top_key

log = logging.getLogger("resilience")

FLUSH_SECONDS = 1.0
# As in admit_main.lua: the dashboard's per-minute keys live 20 minutes.
STATS_TTL_SECONDS = 1200


class LimitedTally:
    """Per-minute counts of limited keys, per policy label, waiting to be added to Redis."""

    def __init__(self, client: Callable[[], redis.Redis], prefix: str) -> None:
        self._client = client
        self.prefix = prefix
        self._lock = threading.Lock()
        self._pending: Counter[tuple[int, str, str]] = Counter()  # (minute, label, value) -> refusals
        # (minute, label, outcome) -> admissions ("a") and dry-run refusals ("d"), counted here on a cluster.
        self._outcomes: Counter[tuple[int, str, str]] = Counter()
        self._pid = 0

    def add(self, label: str, key: str) -> None:
        """Count one refusal of limit ``key`` by the policy labelled ``label``, now."""
        self._flushing()
        with self._lock:
            self._pending[(int(time.time() // 60), label, counted_value(key))] += 1

    def add_outcomes(self, specs: Sequence[LimitSpec], hit: HitResult, labels: Sequence[str]) -> None:
        """Count one admission's outcome per policy, as admit_main.lua does on one Redis (stores/cluster.py)."""
        self._flushing()
        minute = int(time.time() // 60)
        with self._lock:
            for spec, decision, label in zip(specs, hit.decisions, labels, strict=True):
                if decision.allowed:
                    self._outcomes[(minute, label, "a")] += 1
                elif spec.enforce:
                    self._pending[(minute, label, counted_value(spec.key))] += 1
                else:
                    self._outcomes[(minute, label, "d")] += 1

    def flush(self) -> None:
        """Write what was counted since the last flush (one pipeline, no transaction needed)."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
            outcomes, self._outcomes = self._outcomes, Counter()
        if not pending and not outcomes:
            return

        def write() -> None:
            pipe = self._client().pipeline(transaction=False)
            for (minute, label, value), n in pending.items():
                counts = stats_key(self.prefix, minute)
                top = top_key(self.prefix, minute, label)
                pipe.hincrby(counts, f"{label}:l", n)
                pipe.expire(counts, STATS_TTL_SECONDS)
                pipe.zincrby(top, n, value)
                pipe.expire(top, STATS_TTL_SECONDS)
            for (minute, label, outcome), n in outcomes.items():
                counts = stats_key(self.prefix, minute)
                pipe.hincrby(counts, f"{label}:{outcome}", n)
                pipe.expire(counts, STATS_TTL_SECONDS)
            pipe.execute()

        try:
            store_call("stats", write)  # a client may refuse a command while queueing it
        except StoreUnavailable as e:
            store_errors.labels("stats").inc()
            log.warning(
                "dropped a batch of dashboard counts",
                extra={"event": "store_error", "operation": "stats", "error": repr(e), "refusals": pending.total()},
            )

    def _flushing(self) -> None:
        """Start the flusher thread in this process, once (threads do not survive fork())."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pending.clear()  # counted by the parent, which flushes its own
            self._outcomes.clear()
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="resilience-tally", daemon=True).start()
            atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the flusher must outlive any one bad batch
                log.exception("dashboard counts flush failed", extra={"event": "store_error", "operation": "stats"})
