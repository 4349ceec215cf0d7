"""No answer that names a client leaves marked for shared caches.

A view may mark a page `Cache-Control: public`; this middleware, outside the session and CSRF
middleware, sees the response as the client gets it and makes it `private` when a shared copy could
reach another client's data: the request carried credentials, the response sets a cookie (a CSRF or
session cookie served to everyone would be one secret for all), or it Varies on * (the same
judgement as the stale copies', resilience.http.stale.shared_vary).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_cache_control

from resilience.http.stale import shared_vary


class SharedCacheGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "public" in response.get("Cache-Control", "") and shared_vary(request, response) is None:
            del response["Cache-Control"]
            patch_cache_control(response, private=True)
        return response
