"""Stale copies for breakers with the stale fallback: what is kept, and who may be served it.

The contract in full: docs/resilience.md#stale-copies-who-may-be-served-one.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from resilience.engine.limiter import StoreDataError, StoreUnavailable
from resilience.runtime import Runtime, get_runtime, key_prefix
from resilience.runtime.policies import BREAKER, BreakerRule
from resilience.stores.boundary import store_call
from resilience.stores.keys import stale_copy_key, stale_vary_key

# Splits a comma-separated header value, as django/utils/cache.py does.
_LIST = re.compile(r"\s*,\s*")
# Cache-Control directives that say a response is for one client, or must not be kept at all.
_NOT_SHARED = frozenset({"private", "no-store"})
# Request headers that name a client: a response Varying on one is shared only when the request
# that got it sent none of them.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie"})
# The request attribute through which the resilience middleware asks for copies (breaker rules).
WANTED = "resilience_stale_rules"


def carries_credentials(request: HttpRequest) -> bool:
    """Return True if the request names a client: an Authorization header or a session cookie."""
    return bool(request.META.get("HTTP_AUTHORIZATION")) or settings.SESSION_COOKIE_NAME in request.COOKIES


def _meta_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def shared_vary(request: HttpRequest, response: HttpResponse) -> list[str] | None:
    """Return the headers a shared copy of the response is keyed by, or None if it must not be shared."""
    if carries_credentials(request) or response.cookies or response.has_header("Set-Cookie"):
        return None
    directives = {d.split("=", 1)[0].strip().lower() for d in _LIST.split(response.get("Cache-Control", ""))}
    if directives & _NOT_SHARED:
        return None
    vary = sorted({h.strip().lower() for h in _LIST.split(response.get("Vary", "")) if h.strip()})
    if "*" in vary or any(request.META.get(_meta_name(h)) for h in vary if h in _CREDENTIAL_HEADERS):
        return None
    return vary


def _vary_key(rule: BreakerRule, url: str) -> str:
    """Return the Redis key of the headers a URL's copies are keyed by (learn_cache_key's header list)."""
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return stale_vary_key(key_prefix(), rule.name, digest)


def stale_key(rule: BreakerRule, url: str, request: HttpRequest, vary: list[str]) -> str:
    """Return the Redis key of a URL's copy for the request's values of the ``vary`` headers."""
    variant = "\n".join([url] + [f"{h}={request.META.get(_meta_name(h), '')}" for h in vary])
    digest = hashlib.sha256(variant.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return stale_copy_key(key_prefix(), rule.name, digest)


# Minimum seconds between two stale copies of one URL variant from one worker: a hot URL is not
# rewritten to Redis on every request, at the cost of a copy up to this much older.
STALE_REFRESH_SECONDS = 2.0
_last_saved: dict[str, float] = {}


def save_stale(runtime: Runtime, rule: BreakerRule, request: HttpRequest, response: HttpResponse) -> None:
    """Keep a copy of a good response for the stale fallback if it may be shared (best effort)."""
    vary = shared_vary(request, response)
    if vary is None or not runtime.store_available():
        return
    url = request.get_full_path()
    key = stale_key(rule, url, request, vary)
    now = time.monotonic()
    if now - _last_saved.get(key, 0.0) < STALE_REFRESH_SECONDS:
        return
    if len(_last_saved) > 10_000:
        _last_saved.clear()
    _last_saved[key] = now
    payload = json.dumps(
        {
            "status": response.status_code,
            "content_type": response.get("Content-Type", ""),
            "vary": response.get("Vary", ""),
            "saved_at": time.time(),
            "body": response.content.decode("latin-1"),
        }
    )
    try:
        # Both keys carry the breaker's hash tag: one slot, written in one step.
        pipe = _redis(runtime).pipeline(transaction=True)
        pipe.set(_vary_key(rule, url), json.dumps(vary), ex=rule.stale_max_age)
        pipe.set(key, payload, ex=rule.stale_max_age)
        store_call("stale copy", pipe.execute)
    except StoreUnavailable as e:  # a lost stale copy must never fail the live response
        runtime.store_failed("stale_save", e, "stale", [(BREAKER, rule.name)])


def load_stale(runtime: Runtime, rule: BreakerRule, request: HttpRequest) -> dict[str, Any] | None:
    """Return the kept copy this request may be served, or None (it then gets the 503)."""
    if carries_credentials(request) or not runtime.store_available():
        return None
    url = request.get_full_path()
    client = _redis(runtime)
    try:
        # Two round trips, as in Django's cache: the headers the URL's copies vary on, then the copy.
        vary = store_call("stale copy", client.get, _vary_key(rule, url))
        raw = store_call("stale copy", client.get, stale_key(rule, url, request, _header_list(vary))) if vary else None
        return _checked_copy(json.loads(raw)) if raw else None
    except StoreUnavailable as e:  # no copy is the same as a missing copy: answer 503
        runtime.store_failed("stale_load", e, "stale", [(BREAKER, rule.name)])
    except (ValueError, TypeError, KeyError) as e:
        error = StoreDataError(f"unreadable stale copy: {e!r}")
        runtime.store_failed("stale_load", error, "stale", [(BREAKER, rule.name)])
    return None


def _header_list(raw: Any) -> list[str]:
    """Return the stored list of Varied header names; raise TypeError if it is not one."""
    names = json.loads(raw)
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise TypeError("the Vary list is not a list of header names")
    return names


def _checked_copy(kept: Any) -> dict[str, Any]:
    """Return a stale copy if it has what the breaker's fallback reads; raise ValueError, TypeError or KeyError."""
    if not (isinstance(kept["body"], str) and isinstance(kept["content_type"], str)):
        raise TypeError("body or content_type is not text")
    kept["body"].encode("latin-1")
    if not (isinstance(kept["status"], int) and 200 <= kept["status"] <= 299):
        raise ValueError(f"status {kept['status']!r} is not a good response's")
    float(kept["saved_at"])
    checked: dict[str, Any] = kept
    return checked


def _redis(runtime: Runtime) -> Any:
    return runtime.breaker_shared.client  # type: ignore[attr-defined]  # called only with Redis


class StaleCopyMiddleware:
    """Keep the stale copies the resilience middleware asked for, from the response as clients get it.

    Install it before (outside) SessionMiddleware and CsrfViewMiddleware.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        rules: list[BreakerRule] | None = getattr(request, WANTED, None)
        if rules:
            runtime = get_runtime()
            for rule in rules:
                save_stale(runtime, rule, request, response)
        return response
