"""Who is asking, cheaply: user id and staff flag, cached per credential for a short while.

Only policies keyed by user or exempting staff need this. A credential's first request in a
worker costs one indexed query; later ones are answered from memory for PRINCIPAL_TTL seconds,
so a role change reaches the limiter within that time. A token is never trusted past its expiry.
A token revoked in this process (logout, password change, suspension) is forgotten at once; other
workers stop counting it as its user within PRINCIPAL_TTL.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from hmac import compare_digest
from typing import Any, NamedTuple

from django.db.models.signals import post_delete
from django.http import HttpRequest
from django.utils import timezone

from accounts.token_format import TOKEN_KEY_LENGTH, is_token_shaped

PRINCIPAL_TTL = 30.0  # seconds a resolved credential is trusted
PRINCIPAL_CACHE_SIZE = 10_000

clock = time.monotonic  # seconds; tests replace it


class Principal(NamedTuple):
    user_id: int | None
    is_staff: bool


ANONYMOUS = Principal(None, False)

_cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
_lock = threading.Lock()


def _remember(credential: str, principal: Principal, ttl: float = PRINCIPAL_TTL) -> Principal:
    with _lock:
        _cache[credential] = (clock() + ttl, principal)
        _cache.move_to_end(credential)
        while len(_cache) > PRINCIPAL_CACHE_SIZE:
            _cache.popitem(last=False)
    return principal


def _cached(credential: str) -> Principal | None:
    entry = _cache.get(credential)
    if entry is None or entry[0] <= clock():
        return None
    return entry[1]


def _from_token(token: str, digest: str) -> tuple[Principal, float]:
    """Return the token's principal and for how many seconds it may be trusted."""
    from knox.models import get_token_model

    rows = (
        get_token_model()
        .objects.filter(token_key=token[:TOKEN_KEY_LENGTH], user__is_active=True)
        .values_list("digest", "expiry", "user_id", "user__role", "user__is_superuser")
    )
    now = timezone.now()
    for row_digest, expiry, user_id, role, is_superuser in rows:
        if compare_digest(row_digest, digest) and (expiry is None or expiry > now):
            ttl = PRINCIPAL_TTL if expiry is None else min(PRINCIPAL_TTL, (expiry - now).total_seconds())
            return Principal(user_id, role == "staff" or is_superuser), ttl
    return ANONYMOUS, PRINCIPAL_TTL


def principal(request: HttpRequest) -> Principal:
    """Return the request's user id and whether it is staff (anonymous when unknown)."""
    auth = request.META.get("HTTP_AUTHORIZATION", "")
    if auth[:6].lower() == "token ":
        token = auth[6:].strip()
        # Anything not shaped like one of our tokens cannot authenticate, so costs no query.
        if not is_token_shaped(token):
            return ANONYMOUS
        from knox.crypto import hash_token

        # Keyed by digest: memory holds no usable credential, and a revocation (which knows only
        # the digest) can find the entry.
        digest = hash_token(token)
        credential = "t:" + digest
        hit = _cached(credential)
        if hit is not None:
            return hit
        resolved, ttl = _from_token(token, digest)
        return _remember(credential, resolved, ttl)
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


def _forget_token(sender: type, instance: Any, **kwargs: Any) -> None:
    """Forget a deleted (revoked or expired) token at once."""
    # A lookup that read the row just before the delete may still store it afterwards: this worker
    # then trusts it for at most PRINCIPAL_TTL, like every other worker.
    with _lock:
        _cache.pop("t:" + instance.digest, None)


post_delete.connect(_forget_token, sender="knox.AuthToken", dispatch_uid="resilience.http.principal.forget_token")


def clear() -> None:
    """Forget every cached credential."""
    with _lock:
        _cache.clear()
