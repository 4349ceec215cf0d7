"""The one error shape of the API: application/problem+json (RFC 9457)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse

PROBLEM_CONTENT_TYPE = "application/problem+json"

# Registered in the IANA HTTP Problem Types registry by the RateLimit header fields draft.
IANA_PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
IANA_TYPES = {"quota-exceeded", "temporary-reduced-capacity"}


def problem_type(slug: str) -> str:
    """Return the type URI for a problem slug."""
    if slug in IANA_TYPES:
        return IANA_PROBLEM_BASE + slug
    return f"{settings.PROBLEM_TYPE_BASE}{slug}"


def problem_body(
    *, status: int, slug: str, title: str, detail: str = "", instance: str = "", **extra: Any
) -> dict[str, Any]:
    """Return a problem+json document as a dict."""
    body: dict[str, Any] = {"type": problem_type(slug), "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def problem_response(
    request: HttpRequest | None,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str = "",
    headers: dict[str, str] | None = None,
    quiet: bool = False,
    **extra: Any,
) -> JsonResponse:
    """Return a plain Django response carrying a problem document (for middleware and handlers).

    quiet=True keeps Django from logging the response (one line per request): for refusals the
    resilience layer counts and samples itself, so an attack cannot flood the logs.
    """
    body = problem_body(
        status=status,
        slug=slug,
        title=title,
        detail=detail,
        instance=request.path if request is not None else "",
        **extra,
    )
    response = JsonResponse(body, status=status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    if quiet:
        response._has_been_logged = True  # type: ignore[attr-defined]  # read by django.utils.log
    return response
