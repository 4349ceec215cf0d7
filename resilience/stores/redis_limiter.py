"""Keep rate-limit state in Redis and decide every hit in one atomic Lua round trip."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from resilience.engine.limiter import (
    Decision,
    HitResult,
    LimitSpec,
    decision_from_micros,
    to_micros,
    validate,
)
from resilience.stores import scripts
from resilience.stores.boundary import reply_error, store_call
from resilience.stores.keys import version_key

DEFAULT_VERSION_KEY = version_key("")


class RedisLimiterStore:
    """Decide limits shared by every process that talks to the same Redis.

    Redis ``TIME`` is the clock, so app servers' clocks cannot skew decisions. Every client error
    surfaces as ``StoreUnavailable`` (stores/boundary.py); whether to fail open or closed is the
    caller's policy. The
    client's own timeouts and retries bound how long a dead Redis can stall a request.
    """

    def __init__(
        self, client: redis.Redis, version_key: str = DEFAULT_VERSION_KEY, events_channel: str | None = None
    ) -> None:
        self.client = client
        self.version_key = version_key
        # bump_version() and reset() also publish here, when set (see resilience/runtime/refusals.py).
        self.events_channel = events_channel
        # A cluster client runs no transaction across slots and pipelines no PUBLISH: there, a
        # change is written first and announced after, so a subscriber never hears of it too soon.
        self.clustered = isinstance(client, RedisCluster)
        # register_script runs EVALSHA and reloads the source on NOSCRIPT (restart, failover).
        self._script = client.register_script(scripts.script("limiter_main", "limiter"))

    def hit(self, specs: Sequence[LimitSpec], cost: int = 1, now: float | None = None) -> HitResult:
        """Decide ``specs`` atomically and consume ``cost`` if the request is admitted."""
        checked = validate(specs, cost)
        reply = self._run(checked, cost, now, consume=True)
        try:
            return HitResult(
                decisions=self.parse_decisions(reply, len(checked)),
                allowed=bool(reply[scripts.ADMITTED]),
                version=int(reply[scripts.VERSION]),
            )
        except (TypeError, ValueError, IndexError) as e:
            raise reply_error("hit", e) from e

    def test(self, specs: Sequence[LimitSpec], now: float | None = None) -> list[Decision]:
        """Return the decisions a hit of cost 1 would get, consuming nothing."""
        checked = validate(specs, 1)
        reply = self._run(checked, 1, now, consume=False)
        try:
            return self.parse_decisions(reply, len(checked))
        except (TypeError, ValueError, IndexError) as e:
            raise reply_error("test", e) from e

    def reset(self, keys: Iterable[str]) -> int:
        """Delete the state of ``keys`` and return how many existed."""
        keys = list(keys)
        if not keys:
            return 0
        if self.events_channel is None:
            return int(self._call(self.client.delete, *keys))
        channel = self.events_channel
        if self.clustered:
            deleted = sum(int(self._call(self.client.delete, key)) for key in keys)
            self._call(self.client.publish, channel, "reset")
            return deleted

        def delete_and_announce() -> list[Any]:
            # Workers that remember these keys refused (resilience/runtime/refusals.py) forget them at once.
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*keys)
            pipe.publish(channel, "reset")
            return pipe.execute()

        return int(self._call(delete_and_announce)[0])  # in _call: a client may refuse while queueing

    def bump_version(self) -> int:
        """Increment the policy-version counter and return its new value (and announce it, atomically)."""
        if self.events_channel is None:
            return int(self._call(self.client.incr, self.version_key))
        channel = self.events_channel
        if self.clustered:
            version = int(self._call(self.client.incr, self.version_key))
            self._call(self.client.publish, channel, self.version_key)
            return version

        def bump_and_announce() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(self.version_key)
            pipe.publish(channel, self.version_key)
            return pipe.execute()

        return int(self._call(bump_and_announce)[0])  # in _call: a client may refuse while queueing

    def version(self) -> int:
        """Return the policy-version counter (0 if never bumped)."""
        raw = self._call(self.client.get, self.version_key)
        try:
            return int(raw) if raw is not None else 0
        except ValueError:
            return 0

    def _run(self, specs: list[LimitSpec], cost: int, now: float | None, *, consume: bool) -> list[Any]:
        keys = [spec.key for spec in specs] + [self.version_key]
        args: list[str] = ["" if now is None else str(to_micros(now)), str(cost), "1" if consume else "0"]
        for spec in specs:
            args += [
                spec.algorithm.value,
                str(spec.limit),
                str(spec.period),
                "" if spec.burst is None else str(spec.burst),
                "1" if spec.enforce else "0",
            ]
        reply: list[Any] = self._call(self._script, keys=keys, args=args)
        return reply

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return store_call("rate-limit store", fn, *args, **kwargs)

    @staticmethod
    def parse_decisions(reply: list[Any], count: int) -> list[Decision]:
        decisions = []
        for i in range(count):
            allowed, limit, remaining, reset_us, retry_us = reply[scripts.decision_at(scripts.DECISIONS, i)]
            decisions.append(decision_from_micros(bool(allowed), limit, remaining, reset_us, retry_us))
        return decisions
