"""Admission on a Redis Cluster: a request's limits grouped by slot, one script per slot, in parallel.

A request's limit keys carry different hash tags (stores/keys.py), so they live in different
slots and no one script can see them all. Each slot's limits are decided together by
cluster_main.lua (all-or-nothing within the slot); the scripts of every slot, and a read of the
version counter, go out in one pipeline that writes to every node before reading any reply: one
round trip of wall time. If one slot refused while another admitted, the admitting slots are
given back what they consumed (a second, pipelined round trip, only then), so a refused request
still consumes nothing. Between the two, another request may see that quota taken: it is
refused a moment early, never admitted beyond the limit.

Breakers and bulkhead slots are asked afterwards, each in its own slot, and only when the limits
admitted (a refused request takes no half-open trial and no slot): on a cluster, a request under
a breaker costs two round trips, not one. Dashboard counts are kept in process and written in
batches (runtime/tally.py), since they would live in yet other slots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from resilience.engine.breaker import BreakerConfig, Permit, Transition
from resilience.engine.limiter import Decision, HitResult, LimitSpec, decision_from_micros, to_micros
from resilience.stores import scripts
from resilience.stores.admission import Admission, spec_args
from resilience.stores.boundary import reply_error, store_call
from resilience.stores.keys import key_slot
from resilience.stores.redis_breaker import RedisBreakerStore
from resilience.stores.redis_concurrency import Attempt, RedisConcurrencyStore, SlotRequest
from resilience.stores.redis_limiter import RedisLimiterStore

# Called with the specs, the outcome and one label per spec, after every decided admission.
CountOutcomes = Callable[[Sequence[LimitSpec], HitResult, Sequence[str]], None]


def group_by_slot(specs: Sequence[LimitSpec]) -> dict[int, list[int]]:
    """Return the indexes of ``specs`` per cluster slot of their keys, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(key_slot(spec.key), []).append(i)
    return groups


class ClusterAdmission:
    """Decide limits, then breakers and slots, on a Redis Cluster; the same answers as RedisAdmission."""

    def __init__(
        self,
        limiter: RedisLimiterStore,
        breakers: RedisBreakerStore,
        concurrency: RedisConcurrencyStore | None = None,
        count: CountOutcomes | None = None,
    ) -> None:
        self.limiter = limiter
        self.breakers = breakers
        self.concurrency = concurrency
        self.count = count
        self.client: RedisCluster = limiter.client  # type: ignore[assignment]  # built on a cluster client
        self._script = self.client.register_script(scripts.script("cluster_main", "limiter"))

    def admit(
        self,
        specs: Sequence[LimitSpec],
        breakers: Sequence[BreakerConfig],
        now: float | None = None,
        labels: Sequence[str] | None = None,
        slots: Sequence[SlotRequest] = (),
    ) -> Admission:
        """Decide specs, then breakers, then slots, as RedisAdmission.admit does on one Redis."""
        if len({spec.key for spec in specs}) != len(specs):
            raise ValueError("a key appears twice in one admission")
        hit = store_call("admission", self._hit, specs, now)
        if labels is not None and self.count is not None and specs:
            self.count(specs, hit, labels)
        permits: list[tuple[Permit, list[Transition]]] = []
        tried: list[Attempt] = []
        if hit.allowed:
            for cfg in breakers:
                permit, transitions = self.breakers.allow(cfg, now=now)
                permits.append((permit, transitions))
                if not permit.allowed:
                    break
            if len(permits) == len(breakers) and all(p.allowed for p, _ in permits) and self.concurrency is not None:
                for slot in slots:
                    got = self.concurrency.acquire(
                        slot.base, slot.lease_id, slot.limit, slot.lease_seconds, slot.wait_ms, force=slot.force
                    )
                    tried.append(got)
                    if not got.acquired:
                        break
        return Admission(hit=hit, permits=permits, slots=tried)

    def _hit(self, specs: Sequence[LimitSpec], now: float | None) -> HitResult:
        groups = group_by_slot(specs)
        at = "" if now is None else str(to_micros(now))
        calls = [
            (indexes, [specs[i].key for i in indexes], self._hit_args(specs, indexes, at), slot)
            for slot, indexes in groups.items()
        ]
        pipe = self.client.pipeline()
        for _, keys, args, slot in calls:
            self._evalsha(pipe, slot, keys, args)
        pipe.execute_command(
            "GET", self.limiter.version_key, target_nodes=self._node(key_slot(self.limiter.version_key))
        )
        replies = pipe.execute(raise_on_error=False)
        for n, ((_, keys, args, _), reply) in enumerate(zip(calls, replies, strict=False)):
            if isinstance(reply, NoScriptError):  # a node restarted or was promoted: load there, once
                replies[n] = self._script(keys=keys, args=args)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        try:
            version = int(replies[-1]) if replies[-1] is not None else 0
        except ValueError:
            version = 0  # as rl_version: a counter written by hand reads as 0
        decisions: list[Decision | None] = [None] * len(specs)
        receipts: list[str] = [""] * len(specs)
        admitted = True
        try:
            for (indexes, _, _, _), reply in zip(calls, replies, strict=False):
                admitted = admitted and bool(reply[scripts.SLOT_ADMITTED])
                receipts_at = scripts.after_decisions(scripts.SLOT_DECISIONS, len(indexes))
                for j, i in enumerate(indexes):
                    allowed, limit, remaining, reset_us, retry_us = reply[
                        scripts.decision_at(scripts.SLOT_DECISIONS, j)
                    ]
                    decisions[i] = decision_from_micros(bool(allowed), limit, remaining, reset_us, retry_us)
                    raw = reply[receipts_at + j]
                    receipts[i] = raw.decode() if isinstance(raw, bytes) else str(raw)
        except (TypeError, ValueError, IndexError) as e:
            raise reply_error("admission", e) from e
        if not admitted and any(receipts):
            self._refund(specs, calls, receipts)
            # Report the state after the refund, as one Redis reports a refused request's.
            for i, receipt in enumerate(receipts):
                decision = decisions[i]
                if receipt and decision is not None:
                    decisions[i] = decision._replace(remaining=min(decision.limit, decision.remaining + 1))
        return HitResult(decisions=[d for d in decisions if d is not None], allowed=admitted, version=version)

    @staticmethod
    def _hit_args(specs: Sequence[LimitSpec], indexes: list[int], at: str) -> list[str]:
        args = ["hit", at, str(len(indexes))]
        for i in indexes:
            args += spec_args(specs[i])
        return args

    def _node(self, slot: int) -> Any:
        """Return the master of ``slot`` as the client's slot map has it (a MOVED reply updates the map)."""
        return self.client.nodes_manager.get_node_from_slot(slot)

    def _evalsha(self, pipe: Any, slot: int, keys: list[str], args: list[str]) -> None:
        # The node given, not found from the keys: redis-py would otherwise parse EVALSHA's keys per call.
        pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args, target_nodes=self._node(slot))

    def _refund(
        self, specs: Sequence[LimitSpec], calls: list[tuple[list[int], list[str], list[str], int]], receipts: list[str]
    ) -> None:
        """Give back what the admitting slots consumed, one script per slot, pipelined."""
        pipe = self.client.pipeline()
        queued: list[tuple[list[str], list[str]]] = []
        for indexes, keys, _, slot in calls:
            if not any(receipts[i] for i in indexes):
                continue
            args = ["refund", str(len(indexes))]
            for i in indexes:
                args += [*spec_args(specs[i]), receipts[i]]
            queued.append((keys, args))
            self._evalsha(pipe, slot, keys, args)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for (keys, args), reply in zip(queued, replies, strict=True):
            if isinstance(reply, NoScriptError):
                self._script(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
