"""Redis channels, heard by a thread of this process on a connection of its own.

What a process remembers on the strength of a subscription (refusals, tokens) is only safe while the
subscription is live: subscribed, in this process (threads do not survive fork()), and heard from
lately. A message, or the answer to the PING sent after IDLE_CHECK_SECONDS of quiet, counts as heard;
past SILENCE_LIMIT_SECONDS without either (a hung server, a cut cable, a starved thread) it is not
live, and a PING unanswered within IDLE_CHECK_SECONDS ends it. Each lost subscription calls
``on_lost`` (forget everything), is counted and logged, and is made again after ``retry_seconds``.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

from redis.cluster import RedisCluster
from redis.connection import AbstractConnection
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from resilience.ops.metrics import store_errors

log = logging.getLogger("resilience")


def connection_factory(client: Any) -> Callable[[], AbstractConnection] | None:
    """Return how to open a connection of its own for subscriptions through ``client`` (None: it cannot).

    A plain client's pool says how it connects (behind Sentinel, its kwargs ask the sentinels for the
    primary). On a Redis Cluster a PUBLISH reaches the subscribers of every node, so any master will
    do: one is picked anew at each subscription, from the slot map the client knows, so a subscription
    lost with a failed master is made again on a live one.
    """
    if isinstance(client, RedisCluster):

        def connect() -> AbstractConnection:
            pool = client.get_redis_connection(random.choice(client.get_primaries())).connection_pool
            return pool.connection_class(**pool.connection_kwargs)  # type: ignore[no-any-return]  # redis-py's pool is untyped here

        return connect
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return None
    return partial(pool.connection_class, **pool.connection_kwargs)


# How long the listener waits for a message before it checks the connection with a PING, and
# then for the PING's answer (seconds).
IDLE_CHECK_SECONDS = 0.4
# Past this long without a message or a PING's answer, the subscription is not trusted (seconds):
# a message published meanwhile may be waiting unread on a hung server's socket.
SILENCE_LIMIT_SECONDS = 1.0


class Subscription:
    """Call ``on_message(channel, data)`` for each message, and ``on_lost()`` whenever the subscription ends.

    ``on_subscribed()``, if given, runs once each subscription is confirmed and before any message:
    the place to catch up on what was missed while not subscribed.
    """

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        channels: str | tuple[str, ...],
        *,
        retry_seconds: float,
        on_message: Callable[[str, Any], None],
        on_lost: Callable[[], None],
        what: str,
        operation: str = "subscribe",
        on_subscribed: Callable[[], None] | None = None,
        idle_check_seconds: float = IDLE_CHECK_SECONDS,
    ) -> None:
        self._connect = connect
        self.channels = (channels,) if isinstance(channels, str) else channels
        self.channel = self.channels[0]
        self._on_subscribed = on_subscribed
        self._idle_check = idle_check_seconds
        self._retry_seconds = retry_seconds
        self._on_message = on_message
        self._on_lost = on_lost
        self._what = what  # for the log line: "breaker changes", "token revocations"
        self._operation = operation  # the store-errors metric's label
        self._lock = threading.Lock()
        self.since: float | None = None  # perf_counter() once subscribed; None while not subscribed
        self._alive_at = 0.0  # perf_counter() of the last reply of any kind
        self._restart = threading.Event()  # subscribe again at once, without the retry wait
        self._closed = threading.Event()
        self._pid = 0  # the process the listener runs in
        self._conn: AbstractConnection | None = None

    def start(self) -> None:
        """Start the listener thread in this process, once (a no-op when it runs, or once closed)."""
        if self._pid == os.getpid() or self._closed.is_set():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self.since = None  # a subscription inherited across fork() belongs to the parent
            self._on_lost()
            self._pid = os.getpid()
            threading.Thread(target=self._listen, name=f"subscription {self.channel}", daemon=True).start()

    def live(self) -> bool:
        """Return whether the subscription is up, in this process, and heard from lately."""
        return (
            self.since is not None
            and self._pid == os.getpid()
            and not self._closed.is_set()
            and time.perf_counter() - self._alive_at <= SILENCE_LIMIT_SECONDS
        )

    def restart(self) -> None:
        """Drop the subscription and make it again at once (the server behind the connection changed)."""
        self._restart.set()
        self.since = None
        self._on_lost()
        self._disconnect()

    def close(self) -> None:
        """Stop listening for good and drop the connection."""
        self._closed.set()
        self.since = None
        self._on_lost()
        self._disconnect()

    def _disconnect(self) -> None:
        # Wakes the listener blocked on this socket; a connection not yet made is caught by the
        # flags once it has subscribed.
        conn = self._conn
        if conn is not None:
            with suppress(RedisError, OSError):
                conn.disconnect()

    def _listen(self) -> None:
        while not self._closed.is_set():
            self._restart.clear()
            try:
                self._subscribed()
            except Exception as e:  # noqa: BLE001 - whatever the client raised, the listener must outlive it
                if self._closed.is_set():
                    return
                if not self._restart.is_set():
                    store_errors.labels(self._operation).inc()
                    log.warning(
                        f"lost the subscription to {self._what}",
                        extra={"event": "store_error", "operation": self._operation, "error": repr(e)},
                    )
            if not self._restart.is_set():
                self._closed.wait(self._retry_seconds)

    def _subscribed(self) -> None:
        """Subscribe, then pass on each message; return only by raising, or once closed or restarted."""
        conn = self._conn = self._connect()
        try:
            if self._closed.is_set():
                return
            conn.connect()
            conn.send_command("SUBSCRIBE", *self.channels)
            for _ in self.channels:
                conn.read_response(push_request=True)  # the confirmations: from here on, every message reaches us
            if self._closed.is_set() or self._restart.is_set():
                return  # a restart asked meanwhile: this may be the old server
            if self._on_subscribed is not None:
                self._on_subscribed()
            self._alive_at = self.since = time.perf_counter()
            pinged = False
            while True:
                try:
                    reply = conn.read_response(push_request=True, timeout=self._idle_check, disconnect_on_error=False)
                except RedisTimeoutError:
                    if pinged:
                        raise  # not even the PING came back: the connection is dead
                    conn.send_command("PING")
                    pinged = True
                    continue
                pinged = False
                self._alive_at = time.perf_counter()
                if isinstance(reply, list) and len(reply) == 3 and reply[0] in (b"message", "message"):
                    channel = reply[1].decode() if isinstance(reply[1], bytes) else reply[1]
                    self._on_message(channel, reply[2])
        finally:
            self._conn = None
            self.since = None
            self._on_lost()
            with suppress(RedisError, OSError):
                conn.disconnect()
