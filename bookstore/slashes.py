"""One URL per resource: ``/api/books/`` answers 308 Permanent Redirect to ``/api/books``.

A redirect rather than serving both forms: with two URLs per resource, caches (and the breakers'
stale copies) hold two entries, and a rate-limit or breaker pattern written for the canonical
path (``^/api/orders$``) would not match the other. 308 rather than 301: a client may turn a
redirected POST into a GET and drop its body after a 301; after a 308 it sends the same method and
body again (RFC 9110 section 15.4.9), and it may remember the new URL.

The middleware runs ahead of the resilience layer, so the redirect costs a client no quota: only
the request it leads to is counted.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.urls import Resolver404, resolve
from django.utils.encoding import escape_uri_path, iri_to_uri


def _resolves(path: str) -> bool:
    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def canonical_path(path: str) -> str | None:
    """Return path without its trailing slash when only that form names a route, else None."""
    if not path.endswith("/") or path.startswith("//") or len(path) < 2:
        return None
    if _resolves(path):
        return None  # routes such as /api/schema/ end with a slash themselves
    stripped = path[:-1]
    return stripped if _resolves(stripped) else None


class TrailingSlashRedirectMiddleware:
    """Redirect a path whose only fault is a trailing slash to the route without it (308)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.endswith("/") and canonical_path(request.path_info) is not None:
            location = escape_uri_path(request.path[:-1])
            query = request.META.get("QUERY_STRING", "")
            if query:
                location += "?" + iri_to_uri(query)
            return HttpResponsePermanentRedirect(location, preserve_request=True)
        return self.get_response(request)
