"""Bulkhead slots in process: the embedded default without Redis, and each worker's share while Redis is down."""

from __future__ import annotations

import threading
import time


class MemoryConcurrencyStore:
    """Counted slots per key; waiters are woken in arrival order (threading.Condition notifies FIFO)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[str, int] = {}

    def acquire(self, key: str, limit: int, timeout: float, *, force: bool = False) -> tuple[bool, bool]:
        """Take a slot of key's limit, waiting up to timeout seconds; return (acquired, it was full)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            full = self._held.get(key, 0) >= limit
            while self._held.get(key, 0) >= limit and not force:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, True
                self._cond.wait(left)
            self._held[key] = self._held.get(key, 0) + 1
            return True, full

    def release(self, key: str) -> None:
        with self._cond:
            held = self._held.get(key, 0) - 1
            if held > 0:
                self._held[key] = held
            else:
                self._held.pop(key, None)
            self._cond.notify_all()

    def held(self, key: str) -> int:
        with self._cond:
            return self._held.get(key, 0)

    def reset(self, prefix: str) -> int:
        """Forget every slot whose key starts with prefix (held ones are released into nothing)."""
        with self._cond:
            keys = [k for k in self._held if k.startswith(prefix)]
            for k in keys:
                del self._held[k]
            self._cond.notify_all()
            return len(keys)
