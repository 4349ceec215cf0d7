"""System checks for what Django's own cannot see through bookstore/lean.py's subclasses.

Django finds its CSRF middleware by name, so with a subclass it neither sees CSRF protection
(security.W003, silenced in settings) nor checks the CSRF cookie (security.W016): these do both.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.module_loading import import_string


def _has_csrf_middleware() -> bool:
    for path in settings.MIDDLEWARE:
        middleware = import_string(path)
        if isinstance(middleware, type) and issubclass(middleware, CsrfViewMiddleware):
            return True
    return False


@checks.register(checks.Tags.security, deploy=True)
def csrf_middleware_installed(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django's security.W003, silenced in settings, for any CSRF middleware: Django's own or a subclass."""
    if _has_csrf_middleware():
        return []
    return [
        checks.Warning(
            "No CSRF middleware (django.middleware.csrf.CsrfViewMiddleware or a subclass) is in MIDDLEWARE: "
            "forms signed in with a session are open to cross-site request forgery.",
            id="bookstore.W003",
        )
    ]


@checks.register(checks.Tags.security, deploy=True)
def csrf_cookie_secure(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django's security.W016, for a CSRF middleware Django does not recognise by name."""
    if not _has_csrf_middleware() or settings.CSRF_COOKIE_SECURE:
        return []
    return [
        checks.Warning(
            "CSRF_COOKIE_SECURE is not True: the CSRF cookie may be sent over plain HTTP.",
            id="bookstore.W016",
        )
    ]
