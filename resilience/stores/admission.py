"""The middleware's admission: rate limits and breakers decided together.

`RedisAdmission` does it in one Lua round trip (limiter_lib .. breaker_lib .. admit_main);
`MemoryAdmission` does the same against the in-process stores. Breakers are asked only when the
limits admit, so a request refused by a limit never takes a half-open trial slot.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from resilience.engine.breaker import BreakerConfig, Permit, Transition
from resilience.engine.limiter import HitResult, LimitSpec, to_micros, validate
from resilience.stores import scripts
from resilience.stores.boundary import DirectScript, reply_error, store_call
from resilience.stores.keys import counted_value, slot_keys, stats_key, top_key
from resilience.stores.memory_breaker import MemoryBreakerStore
from resilience.stores.memory_limiter import MemoryLimiterStore
from resilience.stores.redis_breaker import RedisBreakerStore, config_args, parse_permit
from resilience.stores.redis_concurrency import Attempt, SlotRequest
from resilience.stores.redis_limiter import RedisLimiterStore


class Admission(NamedTuple):
    hit: HitResult
    # One (permit, transitions) per breaker asked, in order; fewer than given when the limits
    # refused (none asked) or a breaker refused (the walk stops there).
    permits: list[tuple[Permit, list[Transition]]]
    # One first try per bulkhead asked, in order; fewer than given when the limits or a breaker
    # refused (none tried), a try found no slot (the walk stops there), or the store has no slots.
    slots: Sequence[Attempt] = ()


_SPEC_ARGS: dict[tuple[Any, ...], tuple[str, ...]] = {}


def spec_args(spec: LimitSpec) -> tuple[str, ...]:
    """Return the five script arguments of a spec, validating each distinct policy shape once."""
    shape = tuple(spec[1:])
    args = _SPEC_ARGS.get(shape)
    if args is None:
        (checked,) = validate([spec], 1)
        args = (
            checked.algorithm.value,
            str(checked.limit),
            str(checked.period),
            "" if checked.burst is None else str(checked.burst),
            "1" if checked.enforce else "0",
        )
        if len(_SPEC_ARGS) < 10_000:  # shapes come from policies and overrides: a handful
            _SPEC_ARGS[shape] = args
    return args


@lru_cache(maxsize=1024)
def _breaker_args(cfg: BreakerConfig) -> tuple[str, ...]:
    cfg.validate()
    return tuple(config_args(cfg))


class RedisAdmission:
    """Decide limits and breaker admission in one atomic Redis round trip.

    Two scripts share one main chunk: requests that no breaker guards run the smaller one
    without the breaker library, which Redis would otherwise re-create on every call.
    """

    def __init__(self, limiter: RedisLimiterStore, breakers: RedisBreakerStore, stats_prefix: str = "") -> None:
        self.limiter = limiter
        self.breakers = breakers
        self.stats_prefix = stats_prefix
        client = limiter.client
        self._limits_only = DirectScript(client, scripts.script("admit_main", "limiter", "concurrency"))
        self._full = DirectScript(client, scripts.script("admit_main", "limiter", "breaker", "concurrency"))

    def admit(
        self,
        specs: Sequence[LimitSpec],
        breakers: Sequence[BreakerConfig],
        now: float | None = None,
        labels: Sequence[str] | None = None,
        slots: Sequence[SlotRequest] = (),
    ) -> Admission:
        """Decide specs and breakers, then try for slots; with labels (one per spec), count outcomes per minute too."""
        keys = [spec.key for spec in specs]
        if len(set(keys)) != len(keys):
            raise ValueError("a key appears twice in one admission")
        keys.append(self.limiter.version_key)
        args: list[str] = ["" if now is None else str(to_micros(now)), str(len(specs))]
        for spec in specs:
            args += spec_args(spec)
        args.append(str(len(breakers)))
        for cfg in breakers:
            keys += self.breakers.keys_for(cfg.name)
            args += _breaker_args(cfg)
        stat_labels = list(labels) if labels is not None and self.stats_prefix else None
        if stat_labels is not None:
            args.append("1")
            args += stat_labels
        else:
            args.append("")
        args.append(str(len(slots)))
        for slot in slots:
            keys += slot_keys(slot.base)
            args += slot.args()
        if stat_labels is not None:
            # Stats minutes by this clock, not Redis's: a count a second off its minute is harmless.
            minute = int((time.time() if now is None else now) // 60)
            keys.append(stats_key(self.stats_prefix, minute))
            keys += [top_key(self.stats_prefix, minute, label) for label in stat_labels]
        script = self._full if breakers else self._limits_only
        reply: list[Any] = store_call("admission", script, keys, args)
        try:
            decisions = RedisLimiterStore.parse_decisions(reply, len(specs))
            hit = HitResult(
                decisions=decisions, allowed=bool(reply[scripts.ADMITTED]), version=int(reply[scripts.VERSION])
            )
            at = scripts.after_decisions(scripts.DECISIONS, len(specs))
            asked = int(reply[at])
            permits = [parse_permit(cfg.name, reply[at + 1 + i]) for i, cfg in enumerate(breakers[:asked])]
            at += 1 + asked
            tried = [Attempt.parse(reply[at + 1 + i]) for i in range(int(reply[at]))]
        except (TypeError, ValueError, IndexError) as e:
            raise reply_error("admission", e) from e
        return Admission(hit=hit, permits=permits, slots=tried)


class MemoryAdmission:
    """The same admission against the in-process stores (embedded default and fallback)."""

    def __init__(self, limiter: MemoryLimiterStore, breakers: MemoryBreakerStore) -> None:
        self.limiter = limiter
        self.breakers = breakers
        self.stats = MemoryStats()

    def admit(
        self,
        specs: Sequence[LimitSpec],
        breakers: Sequence[BreakerConfig],
        now: float | None = None,
        labels: Sequence[str] | None = None,
        slots: Sequence[SlotRequest] = (),
    ) -> Admission:
        """Decide specs and breakers in process; with labels, count outcomes per minute too.

        Slots are not tried here: bulkheads take their in-process slots themselves (resilience/http/bulkheads.py).
        """
        hit = (
            self.limiter.hit(specs, now=now)
            if specs
            else HitResult(decisions=[], allowed=True, version=self.limiter.version())
        )
        if labels is not None:
            self.stats.record(specs, hit, labels, now if now is not None else time.time())
        permits: list[tuple[Permit, list[Transition]]] = []
        if hit.allowed:
            for cfg in breakers:
                permit, transitions = self.breakers.allow(cfg, now=now)
                permits.append((permit, transitions))
                if not permit.allowed:
                    break
        return Admission(hit=hit, permits=permits)


class MemoryStats:
    """Per-minute outcome counts and limited keys kept in process (embedded default, fallback)."""

    KEEP_MINUTES = 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[int, Counter[str]] = {}
        self.top: dict[int, dict[str, Counter[str]]] = {}  # minute -> policy label -> limited key -> count

    def record(self, specs: Sequence[LimitSpec], hit: HitResult, labels: Sequence[str], now: float) -> None:
        minute = int(now // 60)
        with self._lock:
            counts = self.counts.setdefault(minute, Counter())
            for spec, decision, label in zip(specs, hit.decisions, labels, strict=True):
                outcome = "a" if decision.allowed else ("l" if spec.enforce else "d")
                counts[f"{label}:{outcome}"] += 1
                if outcome == "l":
                    value = counted_value(spec.key)
                    self.top.setdefault(minute, {}).setdefault(label, Counter())[value] += 1
            for old in [m for m in self.counts if m < minute - self.KEEP_MINUTES]:
                self.counts.pop(old, None)
                self.top.pop(old, None)

    def minutes(self, first: int, last: int) -> list[tuple[dict[str, int], dict[str, dict[str, int]]]]:
        """Return (counts, limited keys per policy label) for each minute from first to last, inclusive."""
        with self._lock:
            return [
                (dict(self.counts.get(m, {})), {label: dict(keys) for label, keys in self.top.get(m, {}).items()})
                for m in range(first, last + 1)
            ]
