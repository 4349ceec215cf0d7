"""Map every API error, ours and the framework's, to one problem+json shape."""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, InterfaceError, OperationalError
from django.db.models import ProtectedError
from django.http import Http404, HttpRequest, HttpResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler

from bookstore.logging import Sampled
from bookstore.problems import PROBLEM_CONTENT_TYPE, problem_body, problem_response

logger = logging.getLogger("bookstore.api")

# While PostgreSQL is down every API request fails alike: one WARNING line per this many seconds
# per worker says so, with how many requests it turned away ("count"); django.request is told the
# 503 is logged already, so it adds no line of its own per request.
DATABASE_OUTAGE_LOG_INTERVAL = 10.0
database_outage = Sampled(logger, "database_unavailable", DATABASE_OUTAGE_LOG_INTERVAL)


DATABASE_UNAVAILABLE = {
    "slug": "database-unavailable",
    "title": "Database temporarily unavailable",
    "detail": "The database cannot be reached; nothing was written. Retry shortly.",
}
FORCED_OPEN_DETAIL = (
    "The database circuit breaker is forced open: held until an operator releases it. Nothing was written."
)


def database_unavailable(exc: Exception) -> tuple[bool, dict[str, str], dict[str, Any]]:
    """Return (refused by the database breaker, headers, problem members) for a database error.

    Retry-After is the database breaker's time to half-open: no request gets through sooner. While
    an operator holds the breaker forced open there is no such time, and no Retry-After is sent
    (resilience.http.guards.client_retry_after says why). A refusal is not logged (the trip was, once;
    bookstore_breaker_rejections_total counts them).
    """
    from resilience.db.guard import NAME, DatabaseUnavailable, guard

    refused = isinstance(exc, DatabaseUnavailable)
    seconds = exc.retry_after if isinstance(exc, DatabaseUnavailable) else guard.seconds_to_half_open()
    members: dict[str, Any] = {**DATABASE_UNAVAILABLE, **({"breaker": NAME} if refused else {})}
    if seconds is None:
        members.update(detail=FORCED_OPEN_DETAIL, forced=True)
        return refused, {}, members
    return refused, {"Retry-After": str(max(1, math.ceil(seconds)))}, members


class ApplicationError(Exception):
    """A domain error that carries its HTTP status, problem slug and extra members."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra
        self.headers = headers or {}


_SLUGS = {
    400: ("validation-error", "Invalid request"),
    401: ("not-authenticated", "Authentication required"),
    403: ("permission-denied", "Permission denied"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("quota-exceeded", "Too many requests"),
}


def _field_errors(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """Flatten DRF's nested error detail into [{"field", "code", "message"}]."""
    out: list[dict[str, str]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):
                out += _field_errors(value, f"{prefix}[{key}]")
                continue
            name = str(key) if key != "non_field_errors" else ""
            out += _field_errors(value, f"{prefix}.{name}" if prefix and name else (prefix or name))
    elif isinstance(detail, list):
        nested = any(isinstance(item, dict | list) for item in detail)
        for index, item in enumerate(detail):
            if nested:
                out += _field_errors(item, f"{prefix}[{index}]" if prefix else f"[{index}]")
            else:
                out += _field_errors(item, prefix)
    else:
        out.append(
            {
                "field": prefix or "non_field_errors",
                "code": getattr(detail, "code", "invalid") or "invalid",
                "message": str(detail),
            }
        )
    return out


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    """Return a problem+json Response for any exception raised in an API view."""
    request = context.get("request")
    instance = request.path if request is not None else ""
    headers: dict[str, str] = {}

    from resilience.http.limits import LimitRefused

    if isinstance(exc, LimitRefused):
        return exc.response  # the rate limiter's own 429 (or 503), headers and all
    if isinstance(exc, ApplicationError):
        body = problem_body(
            status=exc.status_code,
            slug=exc.slug,
            title=exc.title,
            detail=exc.detail,
            instance=instance,
            **exc.extra,
        )
        return Response(body, status=exc.status_code, content_type=PROBLEM_CONTENT_TYPE, headers=exc.headers)
    if isinstance(exc, RequestDataTooBig | TooManyFieldsSent):
        exc = exceptions.APIException(str(exc) or "Request body too large")
        exc.status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=as_serializer_error(exc))
    elif isinstance(exc, OperationalError | InterfaceError):
        # PostgreSQL unreachable (or the pool exhausted): a temporary condition, not a bug.
        refused, headers, extra = database_unavailable(exc)
        if not refused:
            error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            database_outage.occurred("database unavailable: %s", error, error=error)
        body = problem_body(status=503, instance=instance, **extra)
        unavailable = Response(body, status=503, content_type=PROBLEM_CONTENT_TYPE, headers=headers)
        # Logged already (sampled above, or the breaker's trip): django.request adds no line per request.
        unavailable._has_been_logged = True  # type: ignore[attr-defined]  # read by django.utils.log
        return unavailable
    elif isinstance(exc, DataError):
        # A value passed validation but the database cannot store it (a number out of its column's
        # range, say). The client can fix it, so it is a 400, not a 500; the log says which check
        # is missing.
        logger.warning("value the database cannot store: %s", exc, extra={"event": "data_error"})
        body = problem_body(
            status=400,
            slug="unstorable-value",
            title="Value out of range",
            detail="A value in the request is out of the range the shop can store.",
            instance=instance,
        )
        return Response(body, status=400, content_type=PROBLEM_CONTENT_TYPE)
    elif isinstance(exc, ProtectedError):
        body = problem_body(
            status=409,
            slug="protected",
            title="Still referenced",
            detail="This object is referenced by other records and cannot be deleted.",
            instance=instance,
        )
        return Response(body, status=409, content_type=PROBLEM_CONTENT_TYPE)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = exception_handler(exc, context)
    if response is None:
        return None  # A genuine bug: Django's handler500 answers (problem+json, no traceback).

    code = response.status_code
    slug, title = _SLUGS.get(code, ("error", "Error"))
    extra = {}
    if isinstance(exc, exceptions.ValidationError):
        extra["errors"] = _field_errors(exc.detail)
        detail = "The request has invalid fields; see errors."
    else:
        raw = getattr(exc, "detail", "")
        detail = str(raw) if not isinstance(raw, dict | list) else ""
        code_name = getattr(raw, "code", None)
        if code == 400 and code_name == "parse_error":
            slug, title = "malformed-request", "Malformed request body"
    wait = exc.wait if isinstance(exc, exceptions.Throttled) else None  # type: ignore[attr-defined]  # not in the stubs
    if wait is not None:
        headers["Retry-After"] = str(max(1, int(wait + 0.999)))
    for name in ("WWW-Authenticate", "Allow", "Retry-After"):
        if name in response:
            headers[name] = response[name]
    body = problem_body(status=code, slug=slug, title=title, detail=detail, instance=instance, **extra)
    return Response(body, status=code, content_type=PROBLEM_CONTENT_TYPE, headers=headers)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Answer unknown URLs with problem+json (HTML pages keep Django's page)."""
    if not request.path.startswith(("/api/", "/health/")):
        return defaults.page_not_found(request, exception or Http404())
    return problem_response(request, status=404, slug="not-found", title="Not found", detail="No such resource.")


def handler500(request: HttpRequest) -> HttpResponse:
    """Answer unexpected faults with problem+json and no traceback; a database out of reach with 503.

    Django calls this for an exception raised anywhere outside DRF's views (a middleware, the
    session or authentication layer, the admin) while that exception is being handled.
    """
    exc = sys.exc_info()[1]
    if isinstance(exc, OperationalError | InterfaceError):
        refused, headers, extra = database_unavailable(exc)
        # quiet for a refusal; otherwise Django logs this response once, with the exception.
        return problem_response(request, status=503, headers=headers, quiet=refused, **extra)
    return problem_response(
        request,
        status=500,
        slug="internal-error",
        title="Internal server error",
        detail="An unexpected error occurred; it has been logged.",
    )


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Answer requests Django itself rejects (bad host, oversize body) with problem+json."""
    if isinstance(exception, RequestDataTooBig):
        return problem_response(request, status=413, slug="payload-too-large", title="Request body too large")
    return problem_response(request, status=400, slug="bad-request", title="Bad request")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Answer permission failures outside DRF with problem+json."""
    return problem_response(request, status=403, slug="permission-denied", title="Permission denied")
