"""HTTP caching of the public book pages: validators from the catalogue version, and 304s that render nothing.

A page's ETag is an HMAC of the catalogue version, the absolute URL (pagination links carry the host
and scheme) and the negotiated media type, so it changes with every staff edit, order and cancellation
(catalog.services.catalogue_changed) and one primary-key read decides a conditional GET. Anonymous
pages are `public, max-age=5`: a CDN or nginx may serve one for five seconds, which is how far a shown
stock figure may lag. A request with credentials gets `private` and no validator, and
bookstore.cache_guard turns any `public` answer that sets a cookie into `private`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from datetime import timedelta
from typing import Literal

from django.http import HttpResponseBase, HttpResponseNotModified
from django.utils import timezone
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.crypto import salted_hmac
from django.utils.http import http_date, parse_etags, parse_http_date_safe
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework.request import Request

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


def conditional_page(get: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Give a public book page's GET validators, a 304 without rendering, and shared-cache headers."""

    @functools.wraps(get)
    def view(self: object, request: Request, *args: object, **kwargs: object) -> HttpResponseBase:
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
        else:
            response = get(self, request, *args, **kwargs)
            if response.status_code != 200:
                return response
        response["ETag"] = etag
        if last_modified is not None:
            response["Last-Modified"] = http_date(last_modified)
        patch_cache_control(response, public=True, max_age=MAX_AGE)
        patch_vary_headers(response, ("Accept", "Authorization"))
        return response

    return view
