"""Fault injection for tests and drills: make a named dependency fail or crawl on every worker.

Off unless settings.FAULT_INJECTION is true (env FAULT_INJECTION): then staff switch a fault on
with `PUT /api/ops/faults/<name>` (`{"mode": "error"}` or `{"mode": "slow", "delay_ms": 1500}`,
optional `ttl` seconds, default 300) and off with DELETE. Faults live in the shared cache, so every
worker sees them; each fault point also counts the calls that reached it, which is how tests prove
that an open breaker keeps calls away from the protected code, and a slow fault records how many
calls were inside it at once (its peak), which is how they prove a concurrency limit holds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache

from bookstore.exceptions import ApplicationError
from resilience.runtime import redis_configured

MAX_DELAY_MS = 30_000


class DependencyFailed(ApplicationError):
    status_code = 503
    slug = "dependency-unavailable"
    title = "A dependency failed"


def _key(name: str) -> str:
    return f"fault:{name}"


def calls_key(name: str) -> str:
    return f"fault:{name}:calls"


# One hash tag for the two: _TRACK_LUA writes both, on one Redis Cluster slot.
def _active_key(name: str) -> str:
    return f"fault:{{{name}}}:active"


def _peak_key(name: str) -> str:
    return f"fault:{{{name}}}:peak"


# Calls inside a slow fault point now, and the most there ever were at once: how tests see that a
# concurrency limit holds where the slow work is done. Atomic in Redis: a peak must never be missed.
_TRACK_LUA = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 3600)
if ARGV[1] == '1' and v > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], v, 'EX', 3600)
end
return v
"""
_track_lock = threading.Lock()


def _track(name: str, delta: int) -> None:
    if redis_configured():
        from django_redis import get_redis_connection

        keys = [cache.make_key(_active_key(name)), cache.make_key(_peak_key(name))]
        get_redis_connection("default").eval(_TRACK_LUA, 2, *keys, str(delta))
        return
    with _track_lock:  # one process: the in-process cache
        active = int(cache.get(_active_key(name)) or 0) + delta
        cache.set(_active_key(name), active, timeout=3600)
        if delta > 0 and active > int(cache.get(_peak_key(name)) or 0):
            cache.set(_peak_key(name), active, timeout=3600)


def fault_point(name: str) -> None:
    """Count this call and apply the named fault, if fault injection is on and the fault is set."""
    if not settings.FAULT_INJECTION:
        return
    try:
        cache.incr(calls_key(name))
    except ValueError:
        cache.add(calls_key(name), 0, timeout=3600)
        cache.incr(calls_key(name))
    spec: dict[str, Any] | None = cache.get(_key(name))
    if not spec:
        return
    if spec["mode"] == "slow":
        _track(name, 1)
        try:
            time.sleep(min(int(spec.get("delay_ms", 1000)), MAX_DELAY_MS) / 1000)
        finally:
            _track(name, -1)
    elif spec["mode"] == "error":
        raise DependencyFailed(f"Injected failure of {name}.", dependency=name)


def fault_set(*, name: str, mode: str, delay_ms: int = 0, ttl: int = 300) -> dict[str, Any]:
    """Switch a fault on for ttl seconds and return it."""
    spec = {"name": name, "mode": mode, "delay_ms": delay_ms, "ttl": ttl}
    cache.set(_key(name), spec, timeout=ttl)
    cache.delete(_peak_key(name))  # the peak of this fault's calls, from now
    return spec


def fault_clear(*, name: str) -> None:
    """Switch a fault off."""
    cache.delete(_key(name))


def fault_get(*, name: str) -> dict[str, Any]:
    """Return the fault's state and how many calls reached its point."""
    return {
        "name": name,
        "active": cache.get(_key(name)),
        "calls": int(cache.get(calls_key(name)) or 0),
        "in_progress": int(cache.get(_active_key(name)) or 0),
        "peak": int(cache.get(_peak_key(name)) or 0),
    }
