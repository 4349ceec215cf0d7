"""Hear Redis Sentinel name a new primary, and move this process there at once.

redis-py asks the sentinels for the primary only when it opens a connection. Pooled connections,
and the events subscription (runtime/refusals.py), stay on the old primary after a failover until it drops
them or refuses a write, about 10 s later: every write meanwhile is discarded when the old primary
becomes a replica (admissions forgotten, resets and policy changes unheard).

So each process subscribes to every sentinel's ``+switch-master`` channel (any sentinel may be
down) and, at the first announcement for its service: asks the announcing sentinel first from now
on (the others may still name the old primary for a moment), points the pool at the new primary
and closes its idle connections (a busy one finishes its command, and is closed when handed back,
since the pool no longer owns a connection to another address), then calls ``on_switch``: the
runtime forgets its refusals and subscribes to the events channel again, on the new primary.
A subscription that was down may have missed an announcement: once subscribed again, it asks that
sentinel for the primary and catches up.

Moving at the announcement is not enough on its own: the replica is promoted up to a second
before the sentinels notice and announce it, and what the old primary accepts meanwhile (counts,
resets) is discarded when it becomes a replica. So when a sentinel says it is promoting a replica
(``+failover-state-send-slaveof-noone``), admissions wait for the announcement, at most
HOLD_SECONDS, as Redis's own FAILOVER command pauses writes: a request waits about a second
instead of being counted where the count is lost. Refusals remembered in memory do not wait.
A primary set to refuse writes without a replica (min-replicas-to-write) may still refuse them for
a few tens of milliseconds after the announcement, while its replica catches up: admissions
refused so within HOLD_SECONDS of the switch are tried again instead of given up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from redis.exceptions import ResponseError
from redis.sentinel import SentinelConnectionPool

from resilience.stores.subscription import Subscription

log = logging.getLogger("resilience")

SWITCHED = "+switch-master"
PROMOTING = "+failover-state-send-slaveof-noone"
# How long admissions wait for a promotion to be announced: what a sentinel takes to see the
# replica promoted (it asks every second during a failover) and announce it, with room to spare.
# Also how long after it a new primary's refusal for want of replicas is waited out (seconds).
HOLD_SECONDS = 2.0
# How often an admission the new primary refused for want of replicas is tried again (seconds).
SETTLE_POLL_SECONDS = 0.01
# A sentinel subscription silent this long is checked with a PING, answered within as long (seconds).
IDLE_CHECK_SECONDS = 2.0

Address = tuple[str, int]


def parse_switch(message: bytes | str) -> tuple[str, Address] | None:
    """Return (service, new primary) from a ``+switch-master`` message, or None if it is not one."""
    text = message.decode() if isinstance(message, bytes) else message
    parts = text.split()
    if len(parts) != 5 or not parts[4].isdigit():
        return None
    return parts[0], (parts[3], int(parts[4]))


def parse_promoting(message: bytes | str) -> str | None:
    """Return the service of a ``+failover-state-send-slaveof-noone`` message, or None."""
    text = message.decode() if isinstance(message, bytes) else message
    parts = text.split()  # slave <name> <ip> <port> @ <service> <primary ip> <primary port>
    return parts[5] if len(parts) == 8 and parts[4] == "@" else None


class FailoverWatch:
    """One per process: a thread per sentinel that moves the pool to each primary the sentinels announce."""

    def __init__(self, pool: SentinelConnectionPool, on_switch: Callable[[], None], retry_seconds: float) -> None:
        self.pool = pool
        self.service = pool.service_name
        self._manager = pool.sentinel_manager
        self._on_switch = on_switch
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._applied: Address | None = None  # the primary last moved to (or found at the start)
        self._pid = 0
        self._closed = threading.Event()
        self.switches = 0  # primaries moved to in this process
        self._moved = threading.Condition()
        self._held_until = 0.0  # monotonic(): admissions wait until then, or until the switch
        self._switched_at = -HOLD_SECONDS  # monotonic() of the last switch
        # One per sentinel: any of them may be down, and any may announce first.
        self._subscriptions = [self._subscription(sentinel) for sentinel in list(self._manager.sentinels)]

    def ensure(self) -> None:
        """Start the watching threads in this process, once (threads do not survive fork())."""
        if self._pid == os.getpid() or self._closed.is_set():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._applied = None
        for subscription in self._subscriptions:
            subscription.start()

    def wait_for_primary(self) -> None:
        """Return once no promotion is under way (at most HOLD_SECONDS after it began)."""
        if self._held_until <= time.monotonic():
            return
        with self._moved:
            while (left := self._held_until - time.monotonic()) > 0:
                self._moved.wait(left)

    def settling(self, error: Exception) -> bool:
        """Return True, after a short wait, if ``error`` is the new primary still waiting for a replica.

        Only within HOLD_SECONDS of a switch: otherwise a primary without replicas is a store
        failure like any other, and requests must not wait for it.
        """
        cause = error.__cause__
        if not (isinstance(cause, ResponseError) and str(cause).startswith("NOREPLICAS")):
            return False
        if time.monotonic() - self._switched_at >= HOLD_SECONDS:
            return False
        time.sleep(SETTLE_POLL_SECONDS)
        return True

    def hold(self) -> None:
        """Make admissions wait: a sentinel is promoting a replica, and will announce it."""
        with self._moved:
            self._held_until = time.monotonic() + HOLD_SECONDS
        log.warning("redis replica being promoted", extra={"event": "redis_failover", "service": self.service})

    def _release(self) -> None:
        with self._moved:
            self._held_until = 0.0
            self._moved.notify_all()

    def close(self) -> None:
        """Stop watching and drop the sentinel connections."""
        self._closed.set()
        self._release()
        for subscription in self._subscriptions:
            subscription.close()

    def switch(self, address: Address, announced_by: Any = None) -> bool:
        """Move this process to primary ``address``; return False if it was there already."""
        with self._lock:
            if address == self._applied:
                self._release()
                return False
            first = self._applied is None and self.pool.master_address in (None, address)
            self._applied = address
            if first:
                return False  # the start: nothing was connected anywhere else
            sentinels = self._manager.sentinels
            if announced_by is not None and announced_by in sentinels:
                # A swap, as redis-py's discover_master makes one: request threads may be reading the list.
                i = sentinels.index(announced_by)
                sentinels[0], sentinels[i] = sentinels[i], sentinels[0]
            self.pool.proxy.master_address = address
            self.pool.disconnect(inuse_connections=False)
            self.switches += 1
            self._switched_at = time.monotonic()
        log.warning(
            "redis primary changed",
            extra={"event": "redis_failover", "service": self.service, "primary": f"{address[0]}:{address[1]}"},
        )
        self._on_switch()
        self._release()
        return True

    # --- one subscription per sentinel ---------------------------------------------------------
    def _subscription(self, sentinel: Any) -> Subscription:
        pool = sentinel.connection_pool
        return Subscription(
            partial(pool.connection_class, **pool.connection_kwargs),
            (SWITCHED, PROMOTING),
            retry_seconds=self._retry_seconds,
            on_message=lambda channel, data: self._heard(channel, data, sentinel),
            on_lost=lambda: None,  # nothing is remembered on its strength
            on_subscribed=lambda: self._catch_up(sentinel),
            what="a sentinel",
            operation="sentinel_subscribe",
            idle_check_seconds=IDLE_CHECK_SECONDS,
        )

    def _catch_up(self, sentinel: Any) -> None:
        """Subscribed: from here nothing is missed. Catch up on what was, while not subscribed."""
        found = sentinel.sentinel_get_master_addr_by_name(self.service)
        if found:
            host = found[0].decode() if isinstance(found[0], bytes) else found[0]
            self.switch((host, int(found[1])), sentinel)

    def _heard(self, channel: str, data: Any, sentinel: Any) -> None:
        if channel == PROMOTING:
            if parse_promoting(data) == self.service:
                self.hold()
            return
        parsed = parse_switch(data)
        if parsed is not None and parsed[0] == self.service:
            self.switch(parsed[1], sentinel)
