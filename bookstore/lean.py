"""API requests that carry no session cookie skip the middleware that only sessions need.

Sessions, the user they hold, flash messages and CSRF protect and serve browsers signed in with a
session cookie. An API call without one (a token, or anonymous) has no session to load, no
messages, and no ambient credential for CSRF to guard (DRF checks CSRF itself for the session
authentication it accepts), so for it these four middleware are pure cost. With a session cookie,
and on every other path (the admin), they run as Django ships them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.auth.models import AnonymousUser
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponseForbidden
from django.middleware.csrf import CsrfViewMiddleware

API_PREFIX = "/api/"


def lean(request: HttpRequest) -> bool:
    """Return whether this request is an API call without a session cookie (decided once per request)."""
    decided: bool | None = getattr(request, "_lean", None)
    if decided is None:
        decided = request.path_info.startswith(API_PREFIX) and settings.SESSION_COOKIE_NAME not in request.COOKIES
        request._lean = decided  # type: ignore[attr-defined]  # a private mark on the request object
    return decided


class LeanSessionMiddleware(SessionMiddleware):
    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request) if lean(request) else super().__call__(request)


class LeanAuthenticationMiddleware(AuthenticationMiddleware):
    def __call__(self, request: HttpRequest) -> Any:
        if lean(request):
            # No session, so no user in it; DRF's authenticators still read tokens from the request.
            request.user = AnonymousUser()
            return self.get_response(request)
        return super().__call__(request)


class LeanMessageMiddleware(MessageMiddleware):
    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request) if lean(request) else super().__call__(request)


class LeanCsrfViewMiddleware(CsrfViewMiddleware):
    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request) if lean(request) else super().__call__(request)

    def process_view(
        self, request: HttpRequest, callback: Any, callback_args: Any, callback_kwargs: Any
    ) -> HttpResponseForbidden | None:
        if lean(request):
            return None
        return super().process_view(request, callback, callback_args, callback_kwargs)
