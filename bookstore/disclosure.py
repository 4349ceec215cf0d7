"""Who may see the app's internals: the /metrics rule, applied to every operational endpoint.

Insiders are callers with ``Authorization: Bearer $METRICS_BEARER_TOKEN`` or clients in
METRICS_ALLOWED_NETWORKS, judged by the address the trusted proxies report (a proxy on the same
host makes REMOTE_ADDR loopback for everyone). Everyone else, a load balancer's probe included,
gets the status code and a minimal body: error texts name hosts, drivers and breaker names that
are nobody else's business.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers, patch_vary_headers

from bookstore.problems import PROBLEM_CONTENT_TYPE
from resilience.http.clientip import client_address

# What a problem document keeps for outsiders: what kind of failure, nothing about why.
_PUBLIC_PROBLEM_MEMBERS = ("type", "title", "status", "instance")


def may_see_internals(request: HttpRequest) -> bool:
    """Return True if the caller holds the metrics bearer token or is a client in the metrics networks."""
    token = settings.METRICS_BEARER_TOKEN
    auth = request.META.get("HTTP_AUTHORIZATION", "")
    if token and auth.startswith("Bearer ") and secrets.compare_digest(auth[7:].strip(), token):
        return True
    address = client_address(request)
    if address is None:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in settings.METRICS_ALLOWED_NETWORKS)


def _minimal(response: HttpResponse) -> dict[str, Any] | None:
    """Return the body an outsider gets instead of response's, or None to leave it as it is."""
    content_type = response.get("Content-Type", "")
    if content_type.startswith(PROBLEM_CONTENT_TYPE):
        body = json.loads(response.content)
        return {name: body[name] for name in _PUBLIC_PROBLEM_MEMBERS if name in body}
    if content_type.startswith("application/json"):
        return {"status": "ok" if response.status_code < 400 else "error"}
    return None


def details_for_insiders(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a view so that only insiders see its body; others get its status and a minimal body."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        if not response.streaming and not may_see_internals(request):
            minimal = _minimal(response)
            if minimal is not None:
                response.content = json.dumps(minimal).encode()
        # The body depends on who asks: no shared cache may hand an insider's answer to anyone.
        add_never_cache_headers(response)
        patch_vary_headers(response, ("Authorization",))
        return response

    return wrapper
