"""Refusals a worker may repeat without asking Redis, and how it hears they no longer hold.

The contract in full: docs/resilience.md#refusals-remembered-in-process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.connection import AbstractConnection

from resilience.stores.subscription import Subscription

# At most this many refused rate-limit keys are remembered per process; past it, new ones are not.
MAX_LIMITED_KEYS = 10_000


class KnownRefusals:
    """Per-process memory of open breakers and refused rate-limit keys, kept honest by a subscription."""

    def __init__(self, connect: Callable[[], AbstractConnection], channel: str, retry_seconds: float) -> None:
        self.channel = channel
        # breaker name -> (perf_counter() when its open period ends, whether it is forced open)
        self._until: dict[str, tuple[float, Any]] = {}
        # rate-limit key -> (perf_counter() when it admits again, what the caller needs to answer)
        self._limited: dict[str, tuple[float, Any]] = {}
        self._heard_at = 0.0  # perf_counter() of the last message (or lost connection)
        self.subscription = Subscription(
            connect,
            channel,
            retry_seconds=retry_seconds,
            on_message=lambda channel, data: self._heard(),
            on_lost=self._heard,
            what="breaker changes",
        )

    def seconds_left(self, name: str) -> float | None:
        """Return how long breaker ``name`` surely stays open, or None when Redis must be asked."""
        found = self._left(self._until, name)
        return found[0] if found is not None else None

    def open_breaker(self, name: str) -> tuple[float, bool] | None:
        """Return (seconds breaker ``name`` surely stays open, whether it is forced open), or None to ask Redis."""
        return self._left(self._until, name)

    def note(self, name: str, retry_after: float, asked_at: float, forced: bool = False) -> None:
        """Remember that Redis, asked at perf_counter() ``asked_at``, said ``name`` opens again in ``retry_after`` s.

        A ``forced`` open breaker holds until released (published like a reset); ``retry_after`` is
        then only how long to go without asking again.
        """
        if self._may_remember(asked_at):
            self._until[name] = (asked_at + retry_after, forced)

    def limited(self, key: str) -> tuple[float, Any] | None:
        """Return (seconds it surely stays refused, detail) for rate-limit ``key``, or None to ask Redis."""
        return self._left(self._limited, key)

    def note_limited(self, key: str, retry_after: float, asked_at: float, detail: Any) -> None:
        """Remember that Redis, asked at perf_counter() ``asked_at``, refused ``key`` for ``retry_after`` s."""
        if not self._may_remember(asked_at):
            return
        if len(self._limited) >= MAX_LIMITED_KEYS and key not in self._limited:
            now = time.perf_counter()
            for stale in [k for k, (until, _) in list(self._limited.items()) if until <= now]:
                self._limited.pop(stale, None)
            if len(self._limited) >= MAX_LIMITED_KEYS:
                return  # many clients at once: the rest ask Redis, as before
        self._limited[key] = (asked_at + retry_after, detail)

    def forget(self) -> None:
        """Forget every refusal (the policies changed in this process)."""
        self._until.clear()
        self._limited.clear()

    def _left(self, table: dict[str, tuple[float, Any]], key: str) -> tuple[float, Any] | None:
        """Return (seconds left, detail) of a remembered refusal still in force, or None."""
        entry = table.get(key)
        if entry is None or not self.live():
            return None
        left = entry[0] - time.perf_counter()
        if left <= 0:
            table.pop(key, None)
            return None
        return left, entry[1]

    def _may_remember(self, asked_at: float) -> bool:
        """Return whether an answer to a question asked at ``asked_at`` can be trusted until it expires."""
        self.subscription.start()
        since = self.subscription.since
        # Not if a change may have been published after the answer and already been heard.
        return since is not None and asked_at >= since and asked_at >= self._heard_at

    def live(self) -> bool:
        """Return whether the subscription is up and heard from (what is remembered is used only then)."""
        return self.subscription.live()

    def restart(self) -> None:
        """Forget everything and subscribe again at once (the primary changed)."""
        self.subscription.restart()

    def close(self) -> None:
        """Stop listening for good and drop the connection; from here on nothing is remembered."""
        self.subscription.close()

    def _heard(self) -> None:
        # In this order: a note that reads _heard_at before it moves may still store, but then
        # the clear() below comes after it and removes what it stored.
        self._heard_at = time.perf_counter()
        self.forget()
