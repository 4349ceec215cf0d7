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
from hiredis import pack_command
from redis.exceptions import NoScriptError

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


class DirectScript:
    """A registered Lua script run with one send and one read on a connection of the client's pool.

    For the request path: redis-py's command path (its retry wrapper, observability hooks and
    per-argument checks) cost twice the round trip's own CPU there (about 70 of 100 µs). The errors
    are the client's own, so store_call tells them apart as before. A script Redis lost (a restart, a
    failover) is loaded again the usual way; a client with no pool (a cluster client) always goes so.
    """

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.script = client.register_script(source)
        self.pool: redis.ConnectionPool | None = getattr(client, "connection_pool", None)

    def __call__(self, keys: list[str], args: list[str]) -> Any:
        pool = self.pool
        if pool is None:
            return self.script(keys=keys, args=args)
        conn = pool.get_connection()
        try:
            command: tuple[str | int, ...] = ("EVALSHA", self.script.sha, len(keys), *keys, *args)
            conn.send_packed_command([pack_command(command)])  # type: ignore[arg-type]  # the stub types a 1-tuple
            return conn.read_response()
        except NoScriptError:
            pass
        except redis.ResponseError:
            raise  # a whole reply was read: the connection is fine
        except BaseException:
            conn.disconnect()  # a reply may be on its way: never hand this connection to another call
            raise
        finally:
            pool.release(conn)
        return self.script(keys=keys, args=args)
