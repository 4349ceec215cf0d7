from __future__ import annotations

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from accounts.models import User
from accounts.usernames import username_validate


class RegisterInput(serializers.Serializer):
    username = serializers.CharField(
        min_length=3,
        max_length=150,
        help_text="Letters, digits and . + - _ in one script (no @); stored NFKC-normalised. "
        "A name that looks like an existing user's is refused.",
    )
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(min_length=8, max_length=128, write_only=True, trim_whitespace=False)

    def validate_username(self, value: str) -> str:
        return username_validate(value)

    def validate(self, attrs: dict) -> dict:
        candidate = User(username=attrs["username"], email=attrs["email"])
        try:
            password_validation.validate_password(attrs["password"], candidate)
        except DjangoValidationError as e:
            # Raised bare from validate(), DRF would file these under non_field_errors.
            raise serializers.ValidationError({"password": list(e.messages)}, code="password") from e
        return attrs


class RegisterOutput(serializers.Serializer):
    username = serializers.CharField(help_text="As it would be stored (NFKC-normalised).")
    email = serializers.EmailField(help_text="As it would be stored (lower case).")
    detail = serializers.CharField(
        help_text="The same whether or not the username or email was taken: registration does not say "
        "which names have accounts. If it was, nothing changed and signing in with this password fails."
    )


class TokenInput(serializers.Serializer):
    username = serializers.CharField(max_length=254, help_text="Username or email.")
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class TokenOutput(serializers.Serializer):
    token = serializers.CharField(help_text="Send as `Authorization: Token <token>`. Shown once.")
    expiry = serializers.DateTimeField(help_text="When the token stops working (ISO 8601, UTC); sign in again then.")


class UserOutput(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "username", "email", "role", "status", "date_joined"]
        read_only_fields = fields
