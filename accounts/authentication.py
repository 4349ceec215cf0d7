"""API token authentication: knox's hashed, expiring tokens, sent as `Authorization: Token <token>`."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox import auth
from knox.crypto import hash_token
from knox.models import AuthToken
from rest_framework import exceptions

from accounts.token_cache import get_cache
from accounts.token_format import is_token_shaped


class TokenAuthentication(auth.TokenAuthentication):
    """knox's TokenAuthentication that refuses malformed tokens before any query and remembers good ones."""

    def authenticate_credentials(self, token: bytes) -> tuple[Any, AuthToken]:
        # knox decodes the header as UTF-8 unguarded (a 500 on other bytes) and passes any text to
        # the database (a NUL byte is a 500 on PostgreSQL): only a token-shaped value goes further.
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if not is_token_shaped(text):
            raise exceptions.AuthenticationFailed("Invalid token.")
        cache = get_cache()
        digest = hash_token(text)
        hit = cache.get(digest)
        if hit is not None:
            return hit
        asked_at = cache.asked()
        user, auth_token = super().authenticate_credentials(token)
        cache.remember(digest, user, auth_token, asked_at)
        return user, auth_token

    def _cleanup_token(self, auth_token: AuthToken) -> bool:
        # knox also sweeps the owner's other expired tokens here, one more query on every request;
        # accounts.services.token_create sweeps them at the owner's next sign-in instead.
        if auth_token.expiry is not None and auth_token.expiry < timezone.now():
            auth_token.delete()
            return True
        return False


class TokenScheme(OpenApiAuthenticationExtension):
    """Describe the token in the OpenAPI schema under the name clients already use."""

    target_class = "accounts.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        scheme = build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Token")
        scheme["description"] = (
            "`Token <token>` from POST /api/accounts/token; it expires at the `expiry` that call returned."
        )
        return scheme
