"""The bounds of a concurrency policy's numbers: the model, the engine and the Lua script share them."""

from __future__ import annotations

MAX_IN_FLIGHT = 10_000  # slots per key: each is one sorted-set member in Redis
MAX_WAIT_MS = 10_000  # a waiting request holds a worker thread: never longer than this
MAX_LEASE_SECONDS = 3_600
MAX_TARGET_MS = 60_000  # an adaptive policy's latency target

# Adaptive limits (AIMD, as TCP's congestion window): each interval, a limit whose calls were slow
# (more than SLOW_SHARE of them over the target) shrinks by DECREASE; one whose calls were fast grows by one.
ADJUST_SECONDS = 1.0
SLOW_SHARE = 0.1
DECREASE = 0.9


def aimd_step(limit: int, calls: int, slow: int, floor: int, ceiling: int) -> int:
    """Return the next limit after an interval of ``calls`` finished calls, ``slow`` of them over the target."""
    if calls <= 0:
        return max(floor, min(ceiling, limit))
    if slow > SLOW_SHARE * calls:
        return max(floor, min(ceiling, int(limit * DECREASE)))
    return max(floor, min(ceiling, limit + 1))
