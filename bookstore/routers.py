"""Catalogue reads from a read replica, with read-your-writes for the client that just wrote.

Only the catalogue is read there: a customer's orders, accounts, tokens and resilience policies
(whose version check is the backstop of every policy change) always come from the primary.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from contextlib import suppress
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.http import HttpRequest, HttpResponse

REPLICA = "replica"
REPLICA_APPS = frozenset({"catalog"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Set for the span of a request that must read the primary: it writes, or its client wrote lately.
_primary_only: ContextVar[bool] = ContextVar("primary_only", default=False)


class PrimaryReplicaRouter:
    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        if model._meta.app_label not in REPLICA_APPS or _primary_only.get():
            return None
        # A read inside a transaction on the primary must see that transaction's rows and locks.
        if connections["default"].in_atomic_block:
            return None
        return REPLICA

    def db_for_write(self, model: type[Any], **hints: Any) -> str:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # the replica is a copy of the primary: the same rows

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == "default"  # the replica replays the primary's schema


def _pin_key(request: HttpRequest) -> str | None:
    """Return the cache key of the request's credential (never the credential itself), or None if it has none."""
    credential = request.META.get("HTTP_AUTHORIZATION") or request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if not credential:
        return None
    return "replica-pin:" + hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class ReadYourWritesMiddleware:
    """Send a client that wrote within REPLICA_PIN_SECONDS to the primary, so it reads what it wrote.

    Clients are told apart by their credential (token or session cookie): only signed-in clients write.
    With the cache unreachable a signed-in client reads the primary, never a copy older than its write.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        key = _pin_key(request)
        writes = request.method not in SAFE_METHODS
        token = _primary_only.set(writes or (key is not None and self._wrote_lately(key)))
        try:
            response = self.get_response(request)
        finally:
            _primary_only.reset(token)
        if writes and key is not None:
            # The write is done whatever the cache says; with the cache gone, reads go to the primary anyway.
            with suppress(Exception):
                cache.set(key, 1, timeout=max(1, math.ceil(settings.REPLICA_PIN_SECONDS)))
        return response

    @staticmethod
    def _wrote_lately(key: str) -> bool:
        try:
            return cache.get(key) is not None
        except Exception:  # noqa: BLE001 - without the cache, no stale read: the primary answers
            return True
