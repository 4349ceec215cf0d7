"""Per-process memory of authenticated API tokens: a token's later requests cost no query.

An entry is keyed by the token's SHA-512 digest (memory never holds a usable credential) and kept
TOKEN_CACHE_SECONDS at most, never past the token's own expiry, which is checked at every use.

Everything that can end a token or change whom it authenticates as (the token deleted: logout,
logout-all, a new password, suspension, the sign-in cap, the sweep of expired ones; the user saved
or deleted) forgets the user's entries in this process at once and, after commit, publishes the
user's id on a Redis channel. A thread in each worker listens on it and forgets that user's
entries when it hears it: within milliseconds on every worker.

Entries are used only while that subscription is live, and stored only if the database was asked
after the subscription began and after the last message heard, so a revocation published while a
lookup was under way is never outlived by its result. Without Redis, or while the subscription is
down, nothing is remembered and every request asks the database. If a publish itself fails, the
other workers refuse the token within TOKEN_CACHE_SECONDS.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from functools import partial
from typing import Any, NamedTuple

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.utils import timezone
from prometheus_client import Counter
from redis.exceptions import RedisError

from resilience.ops.metrics import store_errors
from resilience.runtime import redis_configured
from resilience.stores.subscription import Subscription, connection_factory

log = logging.getLogger("accounts")

MAX_ENTRIES = 10_000

lookups = Counter(
    "bookstore_token_cache_lookups",
    "API token authentications answered from this process's memory (hit) or the database (miss).",
    ["result"],
)
_hit, _miss = lookups.labels("hit"), lookups.labels("miss")


class Entry(NamedTuple):
    until: float  # time.perf_counter() after which the entry is not used
    user_id: int
    user: Any
    token: Any


def channel() -> str:
    """Return the Redis channel revocations are published on (one per key prefix)."""
    return f"{settings.RESILIENCE_KEY_PREFIX}accounts:token-revocations"


class TokenCache:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._heard_at = 0.0  # perf_counter() of the last message heard (or connection lost)
        self._subscription: Subscription | None = None
        self._closed = False

    # --- the request path ------------------------------------------------------------------
    def get(self, digest: str) -> tuple[Any, Any] | None:
        """Return copies of (user, token) remembered for ``digest``, or None to ask the database."""
        entry = self._entries.get(digest)
        if entry is None or not self.live():
            _miss.inc()
            return None
        expiry = entry.token.expiry
        if entry.until <= time.perf_counter() or (expiry is not None and expiry <= timezone.now()):
            with self._lock:  # forget_user() iterates the entries under this lock
                if self._entries.get(digest) is entry:
                    del self._entries[digest]
            _miss.inc()
            return None
        _hit.inc()
        # Copies: a request may set attributes on its user (permission caches); no other request sees them.
        user, token = copy.copy(entry.user), copy.copy(entry.token)
        token.user = user
        return user, token

    def asked(self) -> float:
        """Return the time to pass to remember() for a database lookup starting now."""
        self._listening()
        return time.perf_counter()

    def remember(self, digest: str, user: Any, token: Any, asked_at: float) -> None:
        """Remember a token the database, asked at ``asked_at``, authenticated."""
        if self.seconds <= 0:
            return
        with self._lock:
            since = self._subscription.since if self._subscription is not None else None
            if since is None or asked_at < since or asked_at < self._heard_at or not self.live():
                return
            if len(self._entries) >= MAX_ENTRIES and digest not in self._entries:
                self._entries.pop(next(iter(self._entries)))  # the oldest
            self._entries[digest] = Entry(asked_at + self.seconds, user.pk, copy.copy(user), copy.copy(token))

    def forget_user(self, user_id: int | None) -> None:
        """Forget every token of a user (None: everyone's)."""
        with self._lock:
            self._heard_at = time.perf_counter()
            if user_id is None:
                self._entries.clear()
                return
            for digest in [d for d, entry in self._entries.items() if entry.user_id == user_id]:
                del self._entries[digest]

    def live(self) -> bool:
        """Return whether the subscription is up and heard from (entries are used and stored only then)."""
        return self._subscription is not None and self._subscription.live()

    def close(self) -> None:
        """Stop listening for good; from here on nothing is remembered."""
        if self._subscription is not None:
            self._subscription.close()
        self._closed = True
        self.forget_user(None)

    def _listening(self) -> None:
        """Subscribe to revocations in this process, once (a no-op without Redis or when turned off)."""
        if self._closed or self.seconds <= 0 or not redis_configured():
            return
        if self._subscription is None:
            from django_redis import get_redis_connection

            connect = connection_factory(get_redis_connection("default"))
            if connect is None:
                return  # a client that cannot subscribe: nothing is remembered, every token is looked up
            with self._lock:
                if self._subscription is None:
                    self._subscription = Subscription(
                        # Its own connection, outside the pool: a pooled one would be held for good.
                        connect,
                        channel(),
                        retry_seconds=settings.RESILIENCE_STORE_RETRY_SECONDS,
                        on_message=self._revoked,
                        on_lost=lambda: self.forget_user(None),
                        what="token revocations",
                        operation="subscribe_tokens",
                    )
        self._subscription.start()

    def _revoked(self, channel: str, data: Any) -> None:
        try:
            user_id: int | None = int(data)
        except (TypeError, ValueError):
            user_id = None  # not ours to read: forget everyone, to be safe
        self.forget_user(user_id)


_cache: TokenCache | None = None
_cache_lock = threading.Lock()


def get_cache() -> TokenCache:
    """Return this process's TokenCache, creating it on first use."""
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = TokenCache(settings.TOKEN_CACHE_SECONDS)
    return _cache


def clear() -> None:
    """Forget every remembered token in this process (the subscription stays)."""
    if _cache is not None:
        _cache.forget_user(None)


def reset() -> None:
    """Drop the process's TokenCache (tests, settings changes); the next use builds a new one."""
    global _cache
    with _cache_lock:
        dropped, _cache = _cache, None
    if dropped is not None:
        dropped.close()


# --- revocations -------------------------------------------------------------------------------
def _publish(user_id: int) -> None:
    if not redis_configured():
        return
    from django_redis import get_redis_connection

    try:
        get_redis_connection("default").publish(channel(), str(user_id))
    except RedisError as e:
        store_errors.labels("publish_token_revocation").inc()
        log.warning(
            "could not publish a token revocation",
            extra={"event": "store_error", "operation": "publish_revocation", "user_id": user_id, "error": repr(e)},
        )


def user_changed(user_id: int) -> None:
    """Forget the user's tokens here at once and, once committed, in every other worker."""
    if _cache is not None:
        _cache.forget_user(user_id)
    # After commit: a worker that heard it earlier could read the old rows again and keep them.
    transaction.on_commit(partial(_publish, user_id), robust=True)


def _token_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    user_changed(instance.user_id)


def _user_saved(sender: type, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    # A sign-in stamps last_login and changes nothing a token authenticates as.
    if kwargs.get("created") or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    user_changed(instance.pk)


def _user_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    user_changed(instance.pk)


def connect_signals() -> None:
    post_delete.connect(_token_deleted, sender="knox.AuthToken", dispatch_uid="accounts.token_cache.token")
    post_save.connect(_user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="accounts.token_cache.user_saved")
    post_delete.connect(_user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="accounts.token_cache.user_del")
