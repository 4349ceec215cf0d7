"""The one place Lua scripts are loaded and composed, and where their replies' layouts are named.

A script is a main chunk (``lua/*_main.lua``) after the libraries it calls, each library preceded
by the bounds it clamps to, taken from the engine that validates the same numbers (so the Lua and
Python bounds cannot drift apart). ``script("admit_main", "limiter", "breaker", "concurrency")``
returns the source to register; the reply offsets below say where each part of a reply starts,
so no parser counts positions by hand.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from resilience.engine import breaker, concurrency, limiter

LUA_DIR = Path(__file__).resolve().parent / "lua"

# Per library: the bounds it clamps to, defined ahead of it as Lua locals.
_BOUNDS: dict[str, dict[str, int | float]] = {
    "limiter": {
        "RL_MAX_LIMIT": limiter.MAX_LIMIT,
        "RL_MAX_PERIOD": limiter.MAX_PERIOD,
        "RL_MAX_BURST": limiter.MAX_BURST,
        "RL_SLIDING_LOG_MAX": limiter.SLIDING_LOG_MAX,
        "RL_MAX_CAPACITY": limiter.MAX_CAPACITY_SECONDS,
    },
    "breaker": {
        "CB_MAX_THRESHOLD": breaker.MAX_FAILURE_THRESHOLD,
        "CB_MAX_COUNT_WINDOW": breaker.MAX_COUNT_WINDOW,
        "CB_MAX_TIME_WINDOW": breaker.MAX_TIME_WINDOW,
        "CB_MAX_MINIMUM_CALLS": breaker.MAX_MINIMUM_CALLS,
        "CB_MAX_OPEN_SECONDS": breaker.MAX_OPEN_SECONDS,
        "CB_MAX_HALF_OPEN": breaker.MAX_HALF_OPEN_CALLS,
    },
    "concurrency": {
        "CC_MAX_IN_FLIGHT": concurrency.MAX_IN_FLIGHT,
        "CC_MAX_WAIT_MS": concurrency.MAX_WAIT_MS,
        "CC_MAX_LEASE_MS": concurrency.MAX_LEASE_SECONDS * 1000,
    },
}


@cache
def load_lua(name: str) -> str:
    """Return the source of ``resilience/stores/lua/<name>.lua``."""
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


@cache
def library(name: str) -> str:
    """Return ``lua/<name>_lib.lua`` preceded by the bounds it clamps to."""
    bounds = _BOUNDS[name]
    return "\n".join([*(f"local {bound} = {value}" for bound, value in bounds.items()), load_lua(f"{name}_lib")])


@cache
def script(main: str, *libraries: str) -> str:
    """Return the source of main chunk ``lua/<main>.lua`` after the named libraries, in that order."""
    return "\n".join([*(library(name) for name in libraries), load_lua(main)])


# --- reply layouts ------------------------------------------------------------------------------
# One limit decision: allowed, limit, remaining, reset_after_us, retry_after_us (rl_reply).
DECISION_WIDTH = 5
# limiter_main and admit_main: {admitted, version, DECISION_WIDTH per spec, ...}.
ADMITTED = 0
VERSION = 1
DECISIONS = 2
# cluster_main's hit: {admitted, DECISION_WIDTH per spec, one receipt per spec}.
SLOT_ADMITTED = 0
SLOT_DECISIONS = 1


def after_decisions(start: int, specs: int) -> int:
    """Return the offset that follows ``specs`` decisions starting at ``start``."""
    return start + DECISION_WIDTH * specs


def decision_at(start: int, i: int) -> slice:
    """Return the slice of decision ``i`` in a reply whose decisions start at ``start``."""
    at = start + DECISION_WIDTH * i
    return slice(at, at + DECISION_WIDTH)
