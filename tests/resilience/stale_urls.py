"""Views whose responses say, each in its own way, whether a shared copy of them may be kept."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.utils.cache import patch_vary_headers


def public(request: HttpRequest) -> HttpResponse:
    return HttpResponse("public page", content_type="text/plain")


def sets_cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("a page that starts a session", content_type="text/plain")
    response.set_cookie("cart", "c-1234")
    return response


def private(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("for one client", content_type="text/plain")
    response["Cache-Control"] = "private, max-age=60"
    return response


def no_store(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("never keep this", content_type="text/plain")
    response["Cache-Control"] = "no-store"
    return response


def vary_star(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("depends on anything", content_type="text/plain")
    response["Vary"] = "*"
    return response


def vary_cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(f"cookies: {sorted(request.COOKIES)}", content_type="text/plain")
    patch_vary_headers(response, ["Cookie"])
    return response


def vary_authorization(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("depends on who asks", content_type="text/plain")
    patch_vary_headers(response, ["Authorization"])
    return response


urlpatterns = [
    path("t/public", public),
    path("t/sets-cookie", sets_cookie),
    path("t/private", private),
    path("t/no-store", no_store),
    path("t/vary-star", vary_star),
    path("t/vary-cookie", vary_cookie),
    path("t/vary-authorization", vary_authorization),
]
