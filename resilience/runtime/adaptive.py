"""Adaptive concurrency limits: each policy with a floor moves its limit from the latency of its calls.

Every worker times the calls that held a slot of such a policy and, once per ADJUST_SECONDS, reports
how many finished and how many were slower than the target, in one script call per policy
(lua/adaptive_main.lua), which reads back the fleet's limit. The first report of each interval moves
it (engine/concurrency.py: aimd_step). Until a worker has read it, it uses the ceiling
(max_in_flight); while Redis is unreachable it moves its own copy with the same step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from resilience.engine.concurrency import ADJUST_SECONDS, DECREASE, SLOW_SHARE, aimd_step
from resilience.engine.limiter import StoreUnavailable
from resilience.ops.metrics import concurrency_limit
from resilience.runtime.periodic import Periodic
from resilience.runtime.policies import ConcurrencyRule
from resilience.stores import scripts
from resilience.stores.boundary import store_call
from resilience.stores.keys import adaptive_key


class AdaptiveLimits:
    """The limits this process uses for adaptive policies, and the calls it saw since it last reported."""

    def __init__(self, client: Callable[[], Any], prefix: str, failed: Callable[[str, StoreUnavailable], None]) -> None:
        self._client = client  # the Redis client, or None while the runtime has no Redis
        self._prefix = prefix
        self._failed = failed
        self._lock = threading.Lock()
        self._rules: dict[int, ConcurrencyRule] = {}  # the adaptive policies this process hands slots under
        self._limits: dict[int, int] = {}
        self._seen: dict[int, tuple[int, int]] = {}  # policy id -> calls, slow calls, since the last report
        self._asked: set[int] = set()  # policies asked for a limit since the last report
        self._script: Any = None
        self._adjuster = Periodic("adaptive-limits", ADJUST_SECONDS, self.adjust)

    def limit(self, rule: ConcurrencyRule) -> int:
        """Return the limit to hand out slots under now: the fleet's for an adaptive policy, else max_in_flight."""
        if rule.floor is None:
            return rule.max_in_flight
        if not self._adjuster.running_here() or self._rules.get(rule.id) is not rule:
            self._watch(rule)
        self._asked.add(rule.id)
        return max(rule.floor, min(rule.max_in_flight, self._limits.get(rule.id, rule.max_in_flight)))

    def finished(self, rule: ConcurrencyRule, seconds: float) -> None:
        """Count one call that held a slot of ``rule`` for ``seconds``."""
        if rule.floor is None:
            return
        with self._lock:
            calls, slow = self._seen.get(rule.id, (0, 0))
            self._seen[rule.id] = (calls + 1, slow + (seconds > rule.target_seconds))

    def adjust(self) -> None:
        """Report what was seen and read each limit back: the background thread's work, once an interval."""
        with self._lock:
            seen, self._seen, asked, self._asked = self._seen, {}, self._asked, set()
            # A policy nothing asked for nor used in an interval (removed, made fixed, not matched here)
            # is no longer reported; asked again, it is watched again.
            self._rules = {k: rule for k, rule in self._rules.items() if k in asked or k in seen}
            rules = list(self._rules.values())
        client = self._client()
        for rule in rules:
            calls, slow = seen.get(rule.id, (0, 0))
            floor, ceiling = rule.floor or 1, rule.max_in_flight
            limit = aimd_step(self._limits.get(rule.id, ceiling), calls, slow, floor, ceiling)
            if client is not None:
                args = [calls, slow, floor, ceiling, int(ADJUST_SECONDS * 1000), SLOW_SHARE, DECREASE]
                try:
                    limit = int(store_call("adaptive limit", self._run_script, client, rule.id, args))
                except StoreUnavailable as e:
                    self._failed("adaptive_limit", e)  # moved in process this interval, as without Redis
            self._limits[rule.id] = limit
            concurrency_limit.labels(rule.name).set(limit)

    def close(self) -> None:
        self._adjuster.stop()

    def _run_script(self, client: Any, policy_id: int, args: list[Any]) -> Any:
        if self._script is None:
            self._script = client.register_script(scripts.script("adaptive_main"))
        return self._script(keys=[adaptive_key(self._prefix, policy_id)], args=args)

    def _watch(self, rule: ConcurrencyRule) -> None:
        with self._lock:
            if not self._adjuster.running_here() and self._adjuster.start():
                # First here, or forked from a process that counted: its calls are its own to report.
                self._seen, self._limits = {}, {}
            self._rules = {**self._rules, rule.id: rule}  # a policy edited since is watched as it is now
