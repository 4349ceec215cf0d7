"""Request ids: one per request, taken from a sane X-Request-ID or made up, on every log line and response.

The middleware runs first, so it wraps every other middleware: a 429 or 503 the resilience layer
answers carries the id too. The current request is kept alongside, for code that has to say who
did something (policy audit lines) without being handed the request.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

HEADER = "X-Request-ID"
# What a proxy or client may hand us: short, and safe to echo into headers and logs unescaped.
_SANE = re.compile(r"[A-Za-z0-9._-]{1,64}")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_request: ContextVar[HttpRequest | None] = ContextVar("request", default=None)


def get_request_id() -> str | None:
    """Return the id of the request being handled in this context, or None outside a request."""
    return _request_id.get()


def get_request() -> HttpRequest | None:
    """Return the request being handled in this context, or None outside a request."""
    return _request.get()


def request_id_for(incoming: str | None) -> str:
    """Return the incoming id if it is sane, else a new uuid4 hex."""
    if incoming and _SANE.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Give each request an id (request.request_id, the log context) and echo it as X-Request-ID."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_for(request.META.get("HTTP_X_REQUEST_ID"))
        request.request_id = request_id  # type: ignore[attr-defined]  # our own attribute, read by the logs
        id_token = _request_id.set(request_id)
        request_token = _request.set(request)
        try:
            response = self.get_response(request)
        finally:
            _request.reset(request_token)
            _request_id.reset(id_token)
        response[HEADER] = request_id
        return response
