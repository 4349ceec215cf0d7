"""Keep breaker state in Redis so every worker of every instance shares one breaker.

Each operation is one atomic Lua script call (``breaker_lib.lua`` + ``breaker_main.lua``) that mirrors
the step functions of ``resilience.engine.breaker``; the semantics are documented there. Redis ``TIME`` is the
clock unless a ``now`` override is passed. Keys: ``<prefix>{<name>}`` (a hash) and
``<prefix>{<name>}:w`` (the rolling window), one hash tag so both live in one slot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from resilience.engine.breaker import (
    BreakerConfig,
    Permit,
    Snapshot,
    State,
    Transition,
)
from resilience.stores import scripts
from resilience.stores.boundary import reply_error, store_call
from resilience.stores.keys import breaker_keys

_T = TypeVar("_T")


def config_args(cfg: BreakerConfig) -> list[str]:
    """Return the 7 ARGV strings that ``cb_config(argv, i)`` in breaker_lib.lua reads."""
    return [
        str(int(cfg.failure_threshold)),
        repr(float(cfg.failure_rate)),
        str(int(cfg.window_size)),
        cfg.window_kind,
        str(int(cfg.minimum_calls)),
        repr(float(cfg.open_seconds)),
        str(int(cfg.half_open_max_calls)),
    ]


def _text(value: Any) -> str:
    """Return a reply item as str whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_transitions(name: str, raw: Sequence[Any]) -> list[Transition]:
    """Turn the Lua transition array ``{from, to, generation, at}`` into Transitions."""
    return [
        Transition(name, State(_text(src)), State(_text(dst)), int(gen), float(_text(at))) for src, dst, gen, at in raw
    ]


def parse_permit(name: str, reply: Sequence[Any]) -> tuple[Permit, list[Transition]]:
    """Turn the reply of ``cb_allow`` (``{permit, transitions}``) into a Permit and transitions."""
    raw_permit, raw_transitions = reply
    allowed, state, generation, retry_after, trial = raw_permit
    permit = Permit(
        allowed=bool(int(allowed)),
        state=State(_text(state)),
        generation=int(generation),
        retry_after=float(_text(retry_after)),
        trial=bool(int(trial)),
    )
    return permit, parse_transitions(name, raw_transitions)


class RedisBreakerStore:
    """Share breaker state through Redis; every client error surfaces as StoreUnavailable (stores/boundary.py)."""

    def __init__(self, client: redis.Redis, prefix: str = "cb:", events_channel: str | None = None) -> None:
        self.client = client
        self.prefix = prefix
        # force() and reset() publish here (see resilience/runtime/refusals.py): they can close an open breaker
        # before its open period is over.
        self.events_channel = events_channel if events_channel is not None else f"{prefix}events"
        # register_script runs EVALSHA and reloads the source on NOSCRIPT (restart, failover).
        self._script = client.register_script(scripts.script("breaker_main", "breaker"))

    def keys_for(self, name: str) -> list[str]:
        """Return the state key and the window key of breaker ``name``."""
        return breaker_keys(self.prefix, name)

    def allow(self, cfg: BreakerConfig, now: float | None = None) -> tuple[Permit, list[Transition]]:
        """Admit or reject one call; return the permit and any transitions applied."""
        cfg.validate()
        reply = self._run(cfg.name, ["allow", _now(now), *config_args(cfg)])
        return _parsed("allow", parse_permit, cfg.name, reply)

    def record(
        self, cfg: BreakerConfig, generation: int, success: bool | None, now: float | None = None, earlier: int = 0
    ) -> tuple[State, list[Transition]]:
        """Report the outcome of a call admitted with ``generation``; return the state after.

        ``earlier`` successes of calls admitted with the same generation in the closed state are
        counted first, as if recorded one by one (a batch: resilience/runtime/outcomes.py); with
        ``success`` None, only they are.
        """
        cfg.validate()
        outcome = "" if success is None else "1" if success else "0"
        args = ["record", _now(now), *config_args(cfg), str(int(generation)), outcome, str(int(earlier))]
        return _parsed("record", _parse_state, cfg.name, self._run(cfg.name, args))

    def force(self, name: str, state: State | None, now: float | None = None) -> list[Transition]:
        """Hold ``name`` FORCED_OPEN / FORCED_CLOSED, or release it to CLOSED with None."""
        if state is not None and state not in (State.FORCED_OPEN, State.FORCED_CLOSED):
            raise ValueError(f"force() takes {State.FORCED_OPEN}, {State.FORCED_CLOSED} or None, not {state}")
        reply = self._run(name, ["force", _now(now), "" if state is None else str(state), self.events_channel])
        return _parsed("force", _parse_state, name, reply)[1]

    def reset(self, name: str, now: float | None = None) -> list[Transition]:
        """Put ``name`` back to CLOSED with counters cleared and a new generation."""
        reply = self._run(name, ["reset", _now(now), self.events_channel])
        return _parsed("reset", _parse_state, name, reply)[1]

    def snapshot(self, cfg: BreakerConfig, now: float | None = None) -> Snapshot:
        """Return a read-only view of ``cfg.name``."""
        cfg.validate()
        reply = self._run(cfg.name, ["snapshot", _now(now), *config_args(cfg)])
        return _parsed("snapshot", _parse_snapshot, cfg.name, reply)

    def snapshots(self, cfgs: Iterable[BreakerConfig], now: float | None = None) -> list[Snapshot]:
        """Return one snapshot per config, fetched in a single pipelined round trip."""
        cfgs = list(cfgs)
        if not cfgs:
            return []
        for cfg in cfgs:
            cfg.validate()
        if isinstance(self.client, RedisCluster):
            # A cluster pipeline takes no EVALSHA through Script; the breakers live on other slots anyway.
            return [self.snapshot(cfg, now) for cfg in cfgs]
        pipe = store_call("breaker store", self.client.pipeline, transaction=False)
        for cfg in cfgs:
            args = ["snapshot", _now(now), *config_args(cfg)]
            store_call("breaker store", self._script, keys=self.keys_for(cfg.name), args=args, client=pipe)
        replies = store_call("breaker store", pipe.execute)
        return [_parsed("snapshot", _parse_snapshot, cfg.name, reply) for cfg, reply in zip(cfgs, replies, strict=True)]

    def _run(self, name: str, args: list[str]) -> Any:
        """Run one breaker operation; whatever the client raises surfaces as StoreUnavailable."""
        return store_call("breaker store", self._script, keys=self.keys_for(name), args=args)


def _now(now: float | None) -> str:
    """Return the ``now`` argument: empty asks the script to read Redis TIME."""
    return "" if now is None else repr(float(now))


def _parse_state(name: str, reply: Sequence[Any]) -> tuple[State, list[Transition]]:
    """Turn a ``{state, transitions}`` reply into the state and Transitions."""
    state, transitions = reply
    return State(_text(state)), parse_transitions(name, transitions)


def _parsed(operation: str, parse: Callable[[str, Any], _T], name: str, reply: Any) -> _T:
    """Return parse(name, reply); a reply that cannot be read is the store's data error, not a 500."""
    try:
        return parse(name, reply)
    except (TypeError, ValueError, IndexError) as e:
        raise reply_error(f"breaker {operation}", e) from e


def _parse_snapshot(name: str, reply: Sequence[Any]) -> Snapshot:
    """Turn the reply of ``cb_snapshot`` into a Snapshot."""
    state, generation, consecutive, calls, failures, opened_at, retry_after, forced = reply
    opened = _text(opened_at)
    return Snapshot(
        name=name,
        state=State(_text(state)),
        generation=int(generation),
        consecutive_failures=int(consecutive),
        window_calls=int(calls),
        window_failures=int(failures),
        opened_at=float(opened) if opened else None,
        retry_after=float(_text(retry_after)),
        forced=bool(int(forced)),
    )
