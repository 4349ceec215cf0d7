"""OpenAPI additions: summaries, who may call each operation, its problem+json errors and resilience headers.

Which operations can carry the resilience headers is decided the way the layer decides it: rate
limits and breakers are policies staff edit at run time, matched by path prefix, regular
expression, route name or view tag, and a prefix of "/" matches everything. So any operation may
be matched, and a schema that said otherwise would be wrong after the next admin edit. Every
response of every operation therefore documents ``RateLimit-Policy`` / ``RateLimit`` (present when
a limit matched) and ``X-Circuit-Breaker-State`` (present when a breaker protects the route);
every operation documents 429 (with ``Retry-After`` and the RateLimit fields) and 503 with
``Retry-After`` (an open breaker, an unreachable database, or a fail-closed limit whose store is
down; absent only while an operator holds a breaker forced open, which has no time to give);
successful GETs may be a breaker's stale copy (``X-Stale-Response``, ``Age``).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from rest_framework.permissions import SAFE_METHODS

from bookstore.problems import PROBLEM_CONTENT_TYPE

# Staff-only operations (fault injection for drills) are for the people who run the shop, not for
# the public schema; the README documents them.
STAFF_ONLY_PREFIXES = ("/api/ops/",)


def exclude_staff_operations(endpoints: list[tuple[str, str, str, Any]], **kwargs: Any) -> list:
    """Leave staff-only operations out of the schema (drf-spectacular preprocessing hook)."""
    return [endpoint for endpoint in endpoints if not endpoint[0].startswith(STAFF_ONLY_PREFIXES)]


# One line per operation, by operationId, for the operation lists of Swagger UI and Redoc (an
# extend_schema(summary=...) on the view wins). The schema tests require one for every operation.
SUMMARIES = {
    "accounts_register": "Register a customer account",
    "accounts_token": "Get an API token",
    "accounts_logout": "Revoke the token of this request",
    "accounts_logout_all": "Revoke every token of the signed-in account",
    "accounts_me": "Show the signed-in account",
    "books_list": "List books",
    "books_create": "Add a book",
    "books_search": "Search books",
    "books_retrieve": "Show a book",
    "books_update": "Replace a book",
    "books_partial_update": "Change some fields of a book",
    "books_destroy": "Delete a book",
    "orders_list": "List orders",
    "orders_create": "Place an order",
    "orders_retrieve": "Show an order",
    "orders_cancel": "Cancel an order",
}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's AutoSchema, told which of our own permissions let anyone read, and our summaries.

    It lists anonymous access (`{}` in `security`) only for DRF's AllowAny and
    IsAuthenticatedOrReadOnly; a permission with ``anonymous_reads = True`` admits anyone to
    GET, HEAD and OPTIONS as well.
    """

    def get_summary(self) -> str | None:
        return super().get_summary() or SUMMARIES.get(self.get_operation_id())

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
    "429": "Rate limited: a policy's quota is spent; `violated-policies` names it. Retry after Retry-After seconds.",
    "503": (
        "Temporarily unavailable: a circuit breaker is open, the database is unreachable, every slot of a "
        "concurrency limit is taken, or a fail-closed limit cannot reach its store. Nothing was written; retry "
        "after Retry-After seconds. A breaker "
        "an operator holds open (`forced`: true) sends no Retry-After: it holds until released."
    ),
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


_SECONDS = {"type": "integer", "minimum": 0}
HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Policy": {
        "description": (
            "The quota policies that matched the request, tightest first (draft-ietf-httpapi-ratelimit-headers): "
            "a quoted name, `q` the quota and `w` its window in seconds. Present when a rate-limit policy matched."
        ),
        "schema": {"type": "string", "example": '"search-ip";q=20;w=12, "global";q=3000;w=1'},
    },
    "RateLimit": {
        "description": (
            "What is left of each matched policy, in the order of RateLimit-Policy: `r` requests remaining, "
            "`t` seconds until the next request gets in when none remain, else until the quota is back."
        ),
        "schema": {"type": "string", "example": '"search-ip";r=19;t=1, "global";r=2999;t=1'},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,  # declared on the 429 answers, which always carry it
        "schema": {"type": "integer", "minimum": 1},
    },
    # The 503's: every one carries it but a forced-open breaker's, which has no time to give.
    "Retry-After-Unavailable": {
        "description": (
            "Seconds to wait before retrying. Absent while an operator holds a circuit breaker forced open "
            "(the problem says `forced`: true): it holds until released, so no time can be given."
        ),
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
    },
    "X-Circuit-Breaker-State": {
        "description": "The state of the circuit breaker protecting this route. Present when one does.",
        "schema": {"type": "string", "enum": ["closed", "open", "half-open"]},
    },
    "X-Stale-Response": {
        "description": "This is the last good copy, served while the named breaker is open: `breaker=NAME; age=S`.",
        "schema": {"type": "string", "example": "breaker=search; age=12"},
    },
    "Age": {"description": "Seconds since the stale copy was made (with X-Stale-Response).", "schema": _SECONDS},
}
_EVERY_RESPONSE = ("RateLimit-Policy", "RateLimit", "X-Circuit-Breaker-State")
_STALE = ("X-Stale-Response", "Age")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def add_resilience_headers(result: dict[str, Any], generator: object, request: object, public: bool) -> dict:
    """Declare the rate-limit, breaker and Retry-After headers on every operation (postprocessing hook).

    Run after add_problem_responses, so that the 429 and 503 it declares get their headers too.
    """
    result.setdefault("components", {})["headers"] = HEADERS
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            for code, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                for name in _EVERY_RESPONSE:
                    headers.setdefault(name, _ref(name))
                if code == "429":
                    headers["Retry-After"] = _ref("Retry-After")
                elif code == "503":
                    headers["Retry-After"] = _ref("Retry-After-Unavailable")
                if method == "get" and code.startswith("2"):
                    for name in _STALE:
                        headers.setdefault(name, _ref(name))
    return result
