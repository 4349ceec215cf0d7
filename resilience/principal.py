"""Who is asking, cheaply: user id and staff flag, cached per credential for a short while.

Only policies keyed by user or exempting staff need this. A credential's first request in a
worker costs one indexed query; later ones are answered from memory for PRINCIPAL_TTL seconds,
so a role change reaches the limiter within that time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import NamedTuple

from django.http import HttpRequest

PRINCIPAL_TTL = 30.0  # seconds a resolved credential is trusted
PRINCIPAL_CACHE_SIZE = 10_000


class Principal(NamedTuple):
    user_id: int | None
    is_staff: bool


ANONYMOUS = Principal(None, False)

_cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
_lock = threading.Lock()


def _remember(credential: str, principal: Principal) -> Principal:
    with _lock:
        _cache[credential] = (time.monotonic() + PRINCIPAL_TTL, principal)
        _cache.move_to_end(credential)
        while len(_cache) > PRINCIPAL_CACHE_SIZE:
            _cache.popitem(last=False)
    return principal


def _cached(credential: str) -> Principal | None:
    entry = _cache.get(credential)
    if entry is None or entry[0] < time.monotonic():
        return None
    return entry[1]


def _from_token(token: str) -> Principal:
    from rest_framework.authtoken.models import Token

    row = (
        Token.objects.filter(key=token, user__is_active=True)
        .values_list("user_id", "user__role", "user__is_superuser")
        .first()
    )
    if row is None:
        return ANONYMOUS
    return Principal(row[0], row[1] == "staff" or row[2])


def principal(request: HttpRequest) -> Principal:
    """Return the request's user id and whether it is staff (anonymous when unknown)."""
    auth = request.META.get("HTTP_AUTHORIZATION", "")
    if auth[:6].lower() == "token ":
        token = auth[6:].strip()
        # DRF tokens are 40 hex characters; anything else cannot authenticate, so costs no query.
        if len(token) != 40 or not all(c in "0123456789abcdef" for c in token):
            return ANONYMOUS
        credential = "t:" + token
        hit = _cached(credential)
        return hit if hit is not None else _remember(credential, _from_token(token))
    session = getattr(request, "session", None)
    session_key = getattr(session, "session_key", None) if session is not None else None
    if not session_key:
        return ANONYMOUS
    credential = "s:" + session_key
    hit = _cached(credential)
    if hit is not None:
        return hit
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return _remember(credential, ANONYMOUS)
    return _remember(credential, Principal(user.pk, bool(user.is_shop_staff)))


def clear() -> None:
    """Forget every cached credential."""
    with _lock:
        _cache.clear()
