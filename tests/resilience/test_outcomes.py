"""Closed breakers' successes reported in batches: each process reports what it counted, once."""

from __future__ import annotations

import json
import os
from typing import Any

from resilience.engine.breaker import BreakerConfig, State, Transition
from resilience.runtime.outcomes import SuccessBatch


class Reported:
    """A breaker store that only writes down what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool | None, int]] = []

    def record(
        self, cfg: BreakerConfig, generation: int, success: bool | None, now: float | None = None, earlier: int = 0
    ) -> tuple[State, list[Transition]]:
        self.calls.append((cfg.name, generation, success, earlier))
        return State.CLOSED, []


def batch_for(store: Reported) -> SuccessBatch:
    def failed(*args: Any) -> None:
        raise AssertionError(f"no store failure expected: {args}")

    return SuccessBatch(lambda: store, failed, lambda transitions: None)


def test_a_failure_carries_the_successes_counted_before_it() -> None:
    store, cfg = Reported(), BreakerConfig(name="b")
    batch = batch_for(store)
    for _ in range(3):
        batch.success(cfg, 7)
    batch.record(cfg, 7, False)
    batch.close()

    assert store.calls == [("b", 7, False, 3)]


def test_a_forked_process_reports_only_what_it_counted_itself() -> None:
    parent_store, cfg = Reported(), BreakerConfig(name="b")
    batch = batch_for(parent_store)
    batch.success(cfg, 1)  # counted here, not yet reported
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child, as a worker forked from a process that counted
        try:
            child_store = Reported()
            batch._store = lambda: child_store  # noqa: SLF001 - what the child reports, kept apart from the parent's
            batch.success(cfg, 1)
            batch.close()
            os.write(write, json.dumps(child_store.calls).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_calls = json.loads(pipe.read() or "null")
    os.waitpid(pid, 0)
    batch.close()

    assert child_calls == [["b", 1, None, 1]], "the child reports its one success, not the parent's"
    assert parent_store.calls == [("b", 1, None, 1)]
