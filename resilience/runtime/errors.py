"""Policies that cannot be used: skipped, never a 500, and reported where staff look.

A policy is left out of the snapshot when it cannot be compiled (stage "compile": a row out of
bounds, a pattern RE2 refuses; see resilience/runtime/policies.py), and out of one request when it cannot
be decided for it (stage "match": matching raised; "admit": the store refused the admission
script; "record": the store refused a breaker outcome; "stale": the store refused a stale copy).
Each occurrence increments bookstore_resilience_policy_errors_total{policy,stage}. A log line
(event="policy_error") is written at most once per LOG_INTERVAL per policy and stage per worker,
saying how many were suppressed, and the latest error of each policy is kept in a Redis hash that
the admin change lists and the staff dashboard read (recent()).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from resilience.engine.breaker import StoreUnavailable
from resilience.ops.metrics import policy_errors
from resilience.runtime.policies import PolicyError
from resilience.stores.boundary import store_call
from resilience.stores.keys import errors_key

log = logging.getLogger("resilience")

# At most one policy_error line per policy and stage per this many seconds per worker.
LOG_INTERVAL = 10.0
# The admin and the dashboard show errors this recent (their 15-minute view).
SHOWN_SECONDS = 900
# The shared record outlives a quiet day, then goes.
KEEP_SECONDS = 86_400


class PolicyErrorLog:
    """Count, log (sampled) and record the policies a worker could not use."""

    def __init__(self, client: Callable[[], Any] | None, prefix: str) -> None:
        self._client = client  # None: no shared store to record in
        self.key = errors_key(prefix)
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str, str], float] = {}
        self._suppressed: dict[tuple[str, str, str], int] = {}

    def report(self, errors: Iterable[PolicyError]) -> None:
        """Count each error; log and record those not reported in the last LOG_INTERVAL."""
        now = time.monotonic()
        due: list[tuple[PolicyError, int]] = []
        with self._lock:
            for error in errors:
                policy_errors.labels(error.name, error.stage).inc()
                slot = (error.kind, error.name, error.stage)
                if now - self._last.get(slot, float("-inf")) >= LOG_INTERVAL:
                    self._last[slot] = now
                    due.append((error, self._suppressed.pop(slot, 0)))
                else:
                    self._suppressed[slot] = self._suppressed.get(slot, 0) + 1
        for error, suppressed in due:
            log.error(
                "resilience policy %s skipped (%s): %s",
                error.name,
                error.stage,
                error.reason,
                extra={
                    "event": "policy_error",
                    "policy": error.name,
                    "kind": error.kind,
                    "stage": error.stage,
                    "error": error.reason,
                    "suppressed": suppressed,
                },
            )
        if due and self._client is not None:
            self._record([error for error, _ in due])

    def _record(self, errors: list[PolicyError]) -> None:
        at = time.time()
        fields = {
            f"{e.kind}:{e.name}": json.dumps({"stage": e.stage, "reason": e.reason[:300], "at": at}) for e in errors
        }
        client = self._client()  # type: ignore[misc]  # called only when there is a client

        def write() -> None:
            pipe = client.pipeline(transaction=False)
            pipe.hset(self.key, mapping=fields)
            pipe.expire(self.key, KEEP_SECONDS)
            pipe.execute()

        # The log line and the metric still say it when the record cannot be written.
        with suppress(StoreUnavailable):
            store_call("policy errors", write)

    def recent(self, now: float | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """Return {(kind, name): {stage, reason, at}} of errors recorded in the last SHOWN_SECONDS."""
        if self._client is None:
            return {}
        try:
            raw = store_call("policy errors", self._client().hgetall, self.key)
        except StoreUnavailable:
            return {}
        now = time.time() if now is None else now
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for field, value in raw.items():
            kind, _, name = _text(field).partition(":")
            try:
                entry = json.loads(value)
                if now - float(entry["at"]) <= SHOWN_SECONDS:
                    found[(kind, name)] = entry
            except (ValueError, TypeError, KeyError):
                continue  # a record that cannot be read is no record
        return found


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
