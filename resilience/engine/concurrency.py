"""The bounds of a concurrency policy's numbers: the model, the engine and the Lua script share them."""

from __future__ import annotations

MAX_IN_FLIGHT = 10_000  # slots per key: each is one sorted-set member in Redis
MAX_WAIT_MS = 10_000  # a waiting request holds a worker thread: never longer than this
MAX_LEASE_SECONDS = 3_600
