"""OpenAPI additions: who may call each operation, and the problem+json error responses every one can give."""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from rest_framework.permissions import SAFE_METHODS

from bookstore.problems import PROBLEM_CONTENT_TYPE


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's AutoSchema, told which of our own permissions let anyone read.

    It lists anonymous access (`{}` in `security`) only for DRF's AllowAny and
    IsAuthenticatedOrReadOnly; a permission with ``anonymous_reads = True`` admits anyone to
    GET, HEAD and OPTIONS as well.
    """

    def get_auth(self) -> list[dict[str, list[str]]]:
        auths = super().get_auth()
        if (
            {} not in auths
            and self.method in SAFE_METHODS
            and any(getattr(p, "anonymous_reads", False) for p in self.view.get_permissions())
        ):
            auths.append({})
        return auths


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "An RFC 9457 problem. Validation errors add `errors`; domain errors add data members such as `short_lines`."
    ),
    "properties": {
        "type": {"type": "string", "description": "URI naming the kind of problem."},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "The request path."},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                },
                "required": ["field", "code", "message"],
            },
        },
    },
    "required": ["type", "title", "status"],
    "additionalProperties": True,
}

_DESCRIPTIONS = {
    "400": "Invalid parameters or body; `errors` names each field.",
    "401": "Missing or invalid credentials.",
    "403": "Signed in but not allowed (customers cannot edit the catalogue; suspended accounts cannot order).",
    "404": "No such resource or page.",
    "406": "No acceptable response representation.",
    "409": "Conflicts with the current state (taken ISBN, referenced book, short stock, already cancelled).",
    "413": "Request body too large.",
    "415": "Unsupported request media type.",
    "422": "Idempotency-Key reused with a different request body, or an order total above what one order may hold.",
    "429": "Rate limited; see Retry-After.",
    "503": "Temporarily reduced capacity (a circuit breaker is open); see Retry-After.",
}
_EVERY_OPERATION = ("400", "401", "403", "406", "429", "503")
_UNSAFE = {"post", "put", "patch", "delete"}


def _error_codes(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    """Return the error statuses this operation can answer with."""
    codes = list(_EVERY_OPERATION)
    parameters = operation.get("parameters", [])
    if "{" in path or any(p.get("in") == "query" and p.get("name") == "page" for p in parameters):
        codes.append("404")
    if method in _UNSAFE:
        codes.append("409")
    if "requestBody" in operation:
        codes += ["413", "415"]
    if any(p.get("in") == "header" and p.get("name") == "Idempotency-Key" for p in parameters):
        codes.append("422")
    return sorted(codes)


def add_problem_responses(result: dict[str, Any], generator: object, request: object, public: bool) -> dict:
    """Declare the problem+json responses on every operation (drf-spectacular postprocessing hook)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    content = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code in _error_codes(path, method, operation):
                responses.setdefault(code, {"description": _DESCRIPTIONS[code], "content": content})
    return result
