"""The admin's sign-in page behind the sign-in limits."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from resilience.http.limits import LimitRefused, limit

# The code limits the admin's sign-in asks (policies of match type "code" with this pattern).
ADMIN_LOGIN = "admin-login"
# What a refusal copies from the rate limiter's own answer.
_REFUSAL_HEADERS = ("Retry-After", "RateLimit-Policy", "RateLimit", "Server-Timing")


def admin_login(request: HttpRequest) -> HttpResponse:
    """Django admin's login view, with each sign-in attempt counted before any password is hashed.

    Every POST counts, right or wrong: counting failures only would need the hash to know, and
    the hash is what an attacker makes us pay for. A refused attempt gets an HTML page (429, or
    503 from a fail-closed limit whose store is down) with the limiter's Retry-After and RateLimit
    fields, and no form is checked.
    """
    if request.method != "POST":
        return admin.site.login(request)
    username = request.POST.get("username", "")
    try:
        with limit(ADMIN_LOGIN, key=username or None, request=request):
            return admin.site.login(request)
    except LimitRefused as refused:
        return _refused_page(request, refused)


def _refused_page(request: HttpRequest, refused: LimitRefused) -> HttpResponse:
    """Return the admin-styled page that turns a sign-in attempt away, with the limiter's fields."""
    context = {
        **admin.site.each_context(request),
        "title": "Too many sign-in attempts",
        "retry_after": refused.retry_after,
        "unavailable": refused.response.status_code == 503,
    }
    response = TemplateResponse(request, "admin/login_refused.html", context, status=refused.response.status_code)
    for name in _REFUSAL_HEADERS:
        if name in refused.response:
            response[name] = refused.response[name]
    response["Cache-Control"] = "no-store"
    # The limiter logs refusals itself, sampled: an attack must not write a log line per attempt.
    response._has_been_logged = True  # type: ignore[attr-defined]  # read by django.utils.log
    return response
