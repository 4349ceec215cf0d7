"""The API docs pages (Swagger UI, Redoc), with a Content-Security-Policy that allows this site only.

Both pages need inline scripts (the settings and the call that starts the viewer) and an inline
style: they carry a fresh nonce per response instead of 'unsafe-inline', so a script or style
injected into the markup never runs. Redoc also creates <style> elements from its bundle; the
page's first script gives those the nonce (templates/drf_spectacular/redoc.html says how).
Redoc's bundle would also show a logo from a CDN in its footer: the bundle is served from here
with that address removed (the image then hides itself), so the page loads nothing from another
origin, with or without the policy.
"""

from __future__ import annotations

import hashlib
import secrets
from functools import cache
from pathlib import Path
from typing import Any

import drf_spectacular_sidecar
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import etag, require_safe
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response

REDOC_BUNDLE = (
    Path(drf_spectacular_sidecar.__file__).parent / "static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"
)
# The one third-party address Redoc's bundle loads by itself (an <img> in the sidebar's footer).
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def content_security_policy(nonce: str) -> str:
    """Return the docs pages' policy: this origin only, inline code only with the nonce."""
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' 'nonce-{nonce}'",
            f"style-src 'self' 'nonce-{nonce}'",
            # Swagger UI's stylesheet draws its icons as data: SVGs.
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            # Redoc runs its search index in a worker it builds from its own bundle's code (a blob:).
            "worker-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _with_policy(response: Response, nonce: str) -> Response:
    response.data["csp_nonce"] = nonce
    response["Content-Security-Policy"] = content_security_policy(nonce)
    return response


class SwaggerView(SpectacularSwaggerView):
    """Swagger UI under the docs pages' CSP (templates/drf_spectacular/swagger_ui.html puts the nonce)."""

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Render the page with a fresh nonce and its policy."""
        return _with_policy(super().get(request, *args, **kwargs), secrets.token_urlsafe(18))


class RedocView(SpectacularRedocView):
    """Redoc under the docs pages' CSP, with its bundle served by redoc_bundle."""

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Render the page, loading redoc_bundle's copy of Redoc, with a fresh nonce and its policy."""
        response = super().get(request, *args, **kwargs)
        response.data["redoc_standalone"] = reverse("redoc-bundle")
        response.data["settings"] = response.data["settings"] or "{}"
        return _with_policy(response, secrets.token_urlsafe(18))


@cache
def _redoc_bundle() -> tuple[bytes, str]:
    """Return Redoc's bundle without its CDN logo, and an ETag for it (read once per process)."""
    body = REDOC_BUNDLE.read_bytes().replace(REDOC_CDN_LOGO, b"")
    return body, hashlib.sha256(body).hexdigest()[:32]


@require_safe
@etag(lambda request: _redoc_bundle()[1])
@cache_control(public=True, max_age=24 * 3600)
def redoc_bundle(request: HttpRequest) -> HttpResponse:
    """Serve Redoc's standalone bundle as the sidecar ships it, less the logo it would fetch from a CDN."""
    return HttpResponse(_redoc_bundle()[0], content_type="text/javascript; charset=utf-8")
