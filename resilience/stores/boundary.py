"""The one place where whatever a shared-store client raises becomes StoreUnavailable.

Every call into a Redis client goes through ``store_call``. redis-py's standalone client raises
RedisError subclasses, but its cluster client raises RedisClusterException (not a RedisError) for a
command whose keys span slots, a decoding client raises UnicodeDecodeError, another library raises
its own classes: a request must never fail because of which one it was. So any exception from the
client is a store failure, and callers apply each policy's rule for store failures.

One kind is told apart: the store answered and refused this one operation (a Lua error, a key of
the wrong type, an argument out of range), raised as StoreDataError. The store is up, so callers
fall back for this operation only instead of giving up the store for every request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis

from resilience.engine.limiter import StoreDataError, StoreUnavailable

T = TypeVar("T")

# Error replies that say the server cannot serve now (busy with a script, no primary, a full disk,
# keys in several cluster slots): the store is unavailable, not one operation's data at fault.
_SERVER_STATE_ERRORS = ("BUSY", "MASTERDOWN", "NOREPLICAS", "MISCONF", "CLUSTERDOWN", "CROSSSLOT", "LOADING")


def store_call(operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Return fn(*args, **kwargs); raise StoreDataError or StoreUnavailable for anything it raises."""
    try:
        return fn(*args, **kwargs)
    except StoreUnavailable:
        raise
    except redis.ResponseError as e:
        if type(e) is redis.ResponseError and not str(e).startswith(_SERVER_STATE_ERRORS):
            raise StoreDataError(f"{operation}: {e}") from e
        raise StoreUnavailable(f"{operation}: {type(e).__name__}: {e}") from e
    except Exception as e:  # noqa: BLE001 - the boundary: whatever the client raises, the store failed
        raise StoreUnavailable(f"{operation}: {type(e).__name__}: {e}") from e


def reply_error(operation: str, error: Exception) -> StoreDataError:
    """Return the error for a reply that cannot be read (the script or its data is at fault)."""
    return StoreDataError(f"{operation}: unreadable reply: {type(error).__name__}: {error}")
