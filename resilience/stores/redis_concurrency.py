"""Bulkhead slots shared by every process: leases in Redis, decided by one Lua step (lua/concurrency.lua)."""

from __future__ import annotations

from typing import Any, NamedTuple

import redis

from resilience.stores import scripts
from resilience.stores.boundary import DirectScript, reply_error, store_call
from resilience.stores.keys import slot_keys


class Attempt(NamedTuple):
    """One try for a slot."""

    acquired: bool
    in_flight: int  # slots held after this try
    ahead: int  # waiters queued ahead of this caller; -1 when it is not queued
    full: bool  # no slot was free for it (a dry run's slot was taken anyway)

    @classmethod
    def parse(cls, reply: Any) -> Attempt:
        """Read a cc_acquire reply; raise StoreDataError when it cannot be read."""
        try:
            return cls(bool(reply[0]), int(reply[1]), int(reply[2]), bool(reply[3]))
        except (TypeError, ValueError, IndexError) as e:
            raise reply_error("concurrency", e) from e


class SlotRequest(NamedTuple):
    """A first try for a slot, made in the middleware's admission round trip (stores/admission.py)."""

    base: str  # the (policy, key) stem of slot_keys()
    lease_id: str
    limit: int
    lease_seconds: int
    wait_ms: int
    force: bool

    def args(self) -> list[str]:
        return [self.lease_id, str(self.limit), str(self.lease_seconds * 1000), str(max(0, self.wait_ms)),
                "1" if self.force else "0"]  # fmt: skip


class RedisConcurrencyStore:
    """Acquire and release leases in Redis, with Redis's clock; any client error is StoreUnavailable."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        # On the request path (a slot's release after every bounded request): sent and read directly;
        # a script Redis lost (restart, failover) is loaded again.
        self._script = DirectScript(client, scripts.script("concurrency_main", "concurrency"))

    def acquire(
        self, base: str, lease_id: str, limit: int, lease_seconds: int, wait_ms: int, *, force: bool = False
    ) -> Attempt:
        """Take a slot for lease_id if one is free to it; with wait_ms > 0, queue it (in arrival order) if not."""
        args = ["acquire", lease_id, str(limit), str(lease_seconds * 1000), str(max(0, wait_ms)), "1" if force else "0"]
        return Attempt.parse(store_call("concurrency", self._script, keys=slot_keys(base), args=args))

    def release(self, base: str, lease_id: str) -> tuple[int, bool]:
        """Give the slot (or the place in the queue) back; return the slots still held, and whether it was held.

        A slot no longer held had its lease run out while in use (or an operator reset the slots).
        """
        reply: list[Any] = store_call("concurrency", self._script, keys=slot_keys(base), args=["release", lease_id])
        try:
            return int(reply[0]), bool(reply[1])
        except (TypeError, ValueError, IndexError) as e:
            raise reply_error("concurrency", e) from e

    def status(self, base: str) -> tuple[int, int]:
        """Return (slots held, requests waiting), expired leases and tickets left out."""
        reply: list[Any] = store_call("concurrency", self._script, keys=slot_keys(base), args=["status"])
        try:
            return int(reply[0]), int(reply[1])
        except (TypeError, ValueError, IndexError) as e:
            raise reply_error("concurrency", e) from e

    def reset(self, pattern: str) -> int:
        """Delete every slot, queue and deadline key matching pattern; return how many (one) keys' sets went."""

        def scan_and_delete() -> int:
            count = 0
            for key in self.client.scan_iter(match=pattern, count=500):
                count += int(self.client.delete(key))
            return count

        return store_call("concurrency", scan_and_delete)

    def bases(self, pattern: str) -> list[str]:
        """Return the (policy, key) bases whose slot sets match pattern (a SCAN: operators only)."""

        def scan() -> list[str]:
            found = set()
            for key in self.client.scan_iter(match=pattern, count=500):
                text = key.decode() if isinstance(key, bytes) else str(key)
                found.add(text.rsplit(":", 1)[0])
            return sorted(found)

        return store_call("concurrency", scan)
