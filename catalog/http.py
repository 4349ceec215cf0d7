"""HTTP caching of the public book pages: validators from the catalogue version, and 304s that render nothing.

A page's ETag is an HMAC of the catalogue version, the absolute URL (pagination links carry the host
and scheme) and the negotiated media type, so it changes with every staff edit, order and cancellation
(catalog.services.catalogue_changed) and one primary-key read decides a conditional GET. Anonymous
pages are `public, max-age=5`: a CDN or nginx may serve one for five seconds, which is how far a shown
stock figure may lag. A request with credentials gets `private` and no validator, and
bookstore.cache_guard turns any `public` answer that sets a cookie into `private`.

The same ETag keys a process's copies of rendered anonymous JSON pages (CATALOGUE_PAGE_CACHE_BYTES):
it names everything such a page's bytes depend on, so the copy kept under it is the page the view
would render, and a new catalogue version makes every older copy unreachable. A kept page costs
the version read and no rendering; the first request for a page after each change renders it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Literal

from django.conf import settings
from django.http import HttpResponse, HttpResponseBase, HttpResponseNotModified
from django.utils import timezone
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.crypto import salted_hmac
from django.utils.http import http_date, parse_etags, parse_http_date_safe
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from prometheus_client import Counter
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog import selectors
from resilience.http.stale import carries_credentials

# Seconds a shared cache may serve a page without asking again.
MAX_AGE = 5
# Bump when a book page's JSON changes shape, so a deploy does not confirm copies in the old one.
PAGE_FORMAT = 1
# HTTP dates have whole seconds: a change in the same second as the last one would leave
# If-Modified-Since confirming a stale copy, so Last-Modified is sent once the last change has settled.
SETTLED = timedelta(seconds=2)
# What the schema says of every conditional page: its validators, and the 304.
_HEADER: Literal["header"] = "header"
SCHEMA_PARAMETERS = [
    OpenApiParameter(
        "If-None-Match", OpenApiTypes.STR, _HEADER, description="ETags of copies held: 304 if one is current."
    ),
    OpenApiParameter("If-Modified-Since", OpenApiTypes.STR, _HEADER, description="Used without If-None-Match."),
    OpenApiParameter("ETag", OpenApiTypes.STR, _HEADER, response=[200, 304], description="Absent with credentials."),
    OpenApiParameter("Last-Modified", OpenApiTypes.STR, _HEADER, response=[200, 304], description="Once 2 s old."),
    OpenApiParameter(
        "Cache-Control", OpenApiTypes.STR, _HEADER, response=[200, 304], description="public, max-age=5 or private."
    ),
]
NOT_MODIFIED = OpenApiResponse(description="The copy named by If-None-Match or If-Modified-Since is current.")
# The request attribute that carries the version the page was validated at (the count cache's key).
VERSION = "catalogue_version"


@functools.cache
def _etag_key() -> bytes:
    return salted_hmac("catalog.http.etag", "key").digest()


def _etag(request: Request, version: str) -> str:
    # An HMAC rather than the number: outsiders need not learn how many orders the catalogue saw.
    material = f"{PAGE_FORMAT}\n{version}\n{request.build_absolute_uri()}\n{request.accepted_media_type}"
    return f'W/"{hmac.new(_etag_key(), material.encode(), hashlib.sha256).hexdigest()[:32]}"'


def _not_modified(request: Request, etag: str, last_modified: int | None) -> bool:
    """Return True if the client's copy is current (RFC 9110 13.2.2: If-None-Match outranks If-Modified-Since)."""
    if_none_match = request.META.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        # Weak comparison; "*" is not honoured, since it would need the page to exist.
        return etag.removeprefix("W/") in {tag.removeprefix("W/") for tag in parse_etags(if_none_match)}
    since = parse_http_date_safe(request.META.get("HTTP_IF_MODIFIED_SINCE", ""))
    return since is not None and last_modified is not None and last_modified <= since


pages_served = Counter(
    "bookstore_catalogue_pages",
    "Public book pages answered with 200, by whether the body was a kept copy or rendered.",
    ["body"],
)
_KEPT, _RENDERED = pages_served.labels("kept"), pages_served.labels("rendered")


class _Pages:
    """Rendered pages by ETag for the newest catalogue version seen, within a byte budget, oldest out first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = ""
        self._pages: dict[str, tuple[bytes, str]] = {}  # ETag -> (body, Content-Type)
        self._bytes = 0

    def get(self, etag: str) -> tuple[bytes, str] | None:
        return self._pages.get(etag)

    def put(self, version: str, etag: str, body: bytes, content_type: str, budget: int) -> None:
        if len(body) > budget:
            return
        with self._lock:
            if version != self._version:
                # Only to free memory: an older version's ETags are never computed again.
                self._version, self._pages, self._bytes = version, {}, 0
            while self._pages and self._bytes + len(body) > budget:
                self._bytes -= len(self._pages.pop(next(iter(self._pages)))[0])
            if etag not in self._pages:
                self._pages[etag] = (body, content_type)
                self._bytes += len(body)

    def clear(self) -> None:
        with self._lock:
            self._version, self._pages, self._bytes = "", {}, 0


pages = _Pages()


def _keep(view: APIView, request: Request, version: str, etag: str, response: HttpResponseBase) -> None:
    """Render a page now, as DRF would after the view, and keep its bytes under its ETag."""
    budget = settings.CATALOGUE_PAGE_CACHE_BYTES
    # JSON only: the browsable API's HTML holds parts of its own per request (its forms' CSRF tokens).
    if not budget or not isinstance(response, Response) or not isinstance(request.accepted_renderer, JSONRenderer):
        return
    response.accepted_renderer = request.accepted_renderer
    response.accepted_media_type = request.accepted_media_type
    response.renderer_context = view.get_renderer_context()  # type: ignore[attr-defined]  # DRF sets it, untyped
    response.render()
    pages.put(version, etag, response.content, response["Content-Type"], budget)


def conditional_page(get: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Give a public book page's GET validators, a 304 without rendering, and shared-cache headers."""

    @functools.wraps(get)
    def view(self: APIView, request: Request, *args: object, **kwargs: object) -> HttpResponseBase:
        response: HttpResponseBase
        if carries_credentials(request):
            response = get(self, request, *args, **kwargs)
            patch_cache_control(response, private=True)
            return response
        number, changed_at = selectors.catalogue_version()
        # With the time of the change: a number alone repeats after a rollback or a restored database.
        version = f"{number}@{changed_at.isoformat() if changed_at else ''}"
        setattr(request, VERSION, version)
        etag = _etag(request, version)
        last_modified = None
        if changed_at is not None and changed_at <= timezone.now() - SETTLED:
            last_modified = int(changed_at.timestamp())
        if _not_modified(request, etag, last_modified):
            response = HttpResponseNotModified()
        elif (kept := pages.get(etag)) is not None:
            response = HttpResponse(kept[0], content_type=kept[1])
            _KEPT.inc()
        else:
            response = get(self, request, *args, **kwargs)
            if response.status_code != 200:
                return response
            _RENDERED.inc()
            if getattr(self, "keep_pages", True):
                _keep(self, request, version, etag, response)
        response["ETag"] = etag
        if last_modified is not None:
            response["Last-Modified"] = http_date(last_modified)
        patch_cache_control(response, public=True, max_age=MAX_AGE)
        patch_vary_headers(response, ("Accept", "Authorization"))
        return response

    return view
