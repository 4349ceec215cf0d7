"""Password hashing that cannot starve the rest of the API.

A password check is the most expensive thing an anonymous client can make us do (Argon2: about a
third of a CPU-second here), and credential stuffing makes us do it on purpose. The login rate limit
bounds how many checks an attacker gets; this module bounds what each one costs everyone else:
hashes run on a small pool of threads at a low CPU priority (nice 10 on Linux), so they use the
CPU time other requests leave idle. The waiting request thread releases the GIL meanwhile.

Under load a login therefore takes longer, and a page view does not. The stored hashes are
Django's own Argon2 hashes (same identifier, same format): switching back is a settings change.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.contrib.auth.hashers import Argon2PasswordHasher

logger = logging.getLogger(__name__)

T = TypeVar("T")

NICENESS = 10  # CFS gives a nice-10 thread about a tenth of a nice-0 thread's share when both want a CPU
POOL_THREADS = 2  # hashes in progress per process; further ones wait their turn

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def _lower_priority() -> None:
    """Lower this thread's CPU priority; Argon2's own lane threads inherit it (Linux: nice is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except (AttributeError, OSError) as e:  # not Linux, or not permitted: hash at normal priority
        logger.warning("password hashing runs at normal priority: %s", e)


def _executor() -> ThreadPoolExecutor:
    """Return this process's hashing pool, created after any fork (gunicorn preloads, then forks)."""
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is None or _pool_pid != pid:
        with _lock:
            if _pool is None or _pool_pid != pid:
                _pool = ThreadPoolExecutor(
                    max_workers=POOL_THREADS, thread_name_prefix="password-hash", initializer=_lower_priority
                )
                _pool_pid = pid
    return _pool


def run_at_low_priority(fn: Callable[..., T], *args: object) -> T:
    """Run fn(*args) on the low-priority hashing pool and return its result (or raise its error)."""
    return _executor().submit(fn, *args).result()


class LowPriorityArgon2PasswordHasher(Argon2PasswordHasher):
    """Django's Argon2 hasher, run on the low-priority pool (see the module's docstring).

    One lane (parallelism 1, as OWASP recommends) instead of Django's eight: the memory and time
    cost, so the work per guess, are unchanged, but a hash is one low-priority thread instead of
    eight, and CPU shares add up per thread: eight nice-10 threads together outweigh a nice-0 one.
    Hashes made with other parameters still verify, and are redone with these at the next login.
    """

    parallelism = 1

    def encode(self, password: str, salt: str) -> str:
        return run_at_low_priority(super().encode, password, salt)

    def verify(self, password: str, encoded: str) -> bool:
        return run_at_low_priority(super().verify, password, encoded)
