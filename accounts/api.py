"""Registration, tokens and the current user."""

from __future__ import annotations

import unicodedata

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import TokenAuthentication
from accounts.exceptions import AccountSuspended
from accounts.models import User
from accounts.serializers import RegisterInput, RegisterOutput, TokenInput, TokenOutput, UserOutput
from accounts.services import token_create, token_revoke, token_revoke_all, user_register
from resilience.http.limits import limit

# The code limit the token sign-in asks, per account (a policy of match type "code"; the per-IP
# one, login-ip, matches the path in the middleware).
LOGIN_USER = "login-user"
REGISTERED = (
    "Unless this username or email already had an account, the account exists now: "
    "sign in with POST /api/accounts/token."
)


class RegisterApi(APIView):
    """Create a customer account; the answer is the same whether or not the name or email was taken.

    So registration cannot tell anyone which usernames and emails have accounts: a taken one
    gets the same 202, body and (one password hash) time as a new one, and nothing is changed.
    """

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(request=RegisterInput, responses={202: RegisterOutput}, operation_id="accounts_register")
    def post(self, request: Request) -> Response:
        serializer = RegisterInput(data=request.data)
        serializer.is_valid(raise_exception=True)  # password validators report under "password"
        data = serializer.validated_data
        user_register(**data)
        answer = {"username": data["username"], "email": data["email"].strip().lower(), "detail": REGISTERED}
        return Response(RegisterOutput(answer).data, status=status.HTTP_202_ACCEPTED)


class TokenApi(APIView):
    """Exchange a username (or email) and password for a fresh API token and its expiry."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    def get_authenticate_header(self, request: Request) -> str:
        # Without authenticators DRF turns AuthenticationFailed into a 403; wrong credentials are a 401.
        return "Token"

    @extend_schema(request=TokenInput, responses={200: TokenOutput}, operation_id="accounts_token")
    def post(self, request: Request) -> Response:
        serializer = TokenInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        # Usernames are stored NFKC-normalised: "ｒｅａｄｅｒ" signs in as "reader".
        login = unicodedata.normalize("NFKC", serializer.validated_data["username"])
        if "@" in login:
            match = User.objects.filter(email=login.strip().lower()).only("username").first()
            login = match.username if match else login
        # Counted per account before the password is hashed: a refused guess costs no hash. An email
        # is counted as the account it names, so both spellings of one account share a counter.
        with limit(LOGIN_USER, key=login):
            user = authenticate(request, username=login, password=serializer.validated_data["password"])
        if user is None:
            raise exceptions.AuthenticationFailed("Wrong username or password.")
        if user.is_suspended:
            raise AccountSuspended("This account is suspended.")
        return Response(TokenOutput(token_create(user=user)._asdict()).data)


class LogoutApi(APIView):
    """Revoke the token this request carries."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={204: None}, operation_id="accounts_logout")
    def post(self, request: Request) -> Response:
        token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class LogoutAllApi(APIView):
    """Revoke every token of the signed-in account (sign out everywhere)."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={204: None}, operation_id="accounts_logout_all")
    def post(self, request: Request) -> Response:
        token_revoke_all(user=request.user)  # type: ignore[arg-type]  # IsAuthenticated: a User
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses=UserOutput, operation_id="accounts_me")
    def get(self, request: Request) -> Response:
        return Response(UserOutput(request.user).data)
