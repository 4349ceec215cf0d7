"""Fault injection for tests and drills: make a named dependency fail or crawl on every worker.

Off unless settings.FAULT_INJECTION is true (env FAULT_INJECTION): then staff switch a fault on
with `PUT /api/ops/faults/<name>` (`{"mode": "error"}` or `{"mode": "slow", "delay_ms": 1500}`,
optional `ttl` seconds, default 300) and off with DELETE. Faults live in the shared cache, so every
worker sees them; each fault point also counts the calls that reached it, which is how tests prove
that an open breaker keeps calls away from the protected code.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.cache import cache

from bookstore.exceptions import ApplicationError

MAX_DELAY_MS = 30_000


class DependencyFailed(ApplicationError):
    status_code = 503
    slug = "dependency-unavailable"
    title = "A dependency failed"


def _key(name: str) -> str:
    return f"fault:{name}"


def calls_key(name: str) -> str:
    return f"fault:{name}:calls"


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
        time.sleep(min(int(spec.get("delay_ms", 1000)), MAX_DELAY_MS) / 1000)
    elif spec["mode"] == "error":
        raise DependencyFailed(f"Injected failure of {name}.", dependency=name)


def fault_set(*, name: str, mode: str, delay_ms: int = 0, ttl: int = 300) -> dict[str, Any]:
    """Switch a fault on for ttl seconds and return it."""
    spec = {"name": name, "mode": mode, "delay_ms": delay_ms, "ttl": ttl}
    cache.set(_key(name), spec, timeout=ttl)
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
    }
