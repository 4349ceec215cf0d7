"""A background thread that does one piece of work every so often, in the process that started it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("resilience")


class Periodic:
    """Run ``work`` every ``seconds`` on a daemon thread; a forked process starts its own (no thread survives fork)."""

    def __init__(self, name: str, seconds: float, work: Callable[[], None]) -> None:
        self.name = name
        self.seconds = seconds
        self.work = work
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.stopped = False

    def running_here(self) -> bool:
        return self._pid == os.getpid()

    def start(self) -> bool:
        """Start the thread unless this process has one (the caller holds its own lock); return True if it did."""
        if self.running_here() or self.stopped:
            return False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return True

    def stop(self, wait: float = 0.0) -> None:
        """Stop the thread, waiting up to ``wait`` seconds for the work it is doing."""
        self.stopped = True
        self._wake.set()
        if wait and self._thread is not None and self.running_here():
            self._thread.join(timeout=wait)

    def _run(self) -> None:
        while not self.stopped:
            self._wake.wait(self.seconds)
            try:
                self.work()
            except Exception:  # the thread must survive anything one round meets
                log.exception("%s: periodic work failed", self.name)
