"""The OpenAPI schema and the two documentation pages, which must work with no third-party host."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
import schemathesis
from django.test import Client
from pytest_django.fixtures import Settings

from bookstore.wsgi import application

SCHEMA = "/api/schema/"
PROBLEM = "application/problem+json"
DOC_PAGES = ["/api/docs/", "/api/redoc/"]


@pytest.fixture
def schema(client: Client, db: None) -> dict:
    response = client.get(SCHEMA, HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    return response.json()


def _operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, method, operation)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


# --- the schema -------------------------------------------------------------------------------


def test_schema_endpoint_serves_openapi_3(client: Client, db: None) -> None:
    response = client.get(SCHEMA)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert response.content.startswith(b"openapi: 3.")


def test_schema_says_which_operations_anyone_may_call(schema: dict) -> None:
    anonymous = {(method.upper(), path) for path, method, op in _operations(schema) if {} in op.get("security", [])}

    assert anonymous == {
        ("GET", "/api/books"),
        ("GET", "/api/books/{id}"),
        ("GET", "/api/books/search"),
        ("POST", "/api/accounts/register"),
        ("POST", "/api/accounts/token"),
    }
    # Everything else names the credentials it takes.
    for _, _, op in _operations(schema):
        assert {"tokenAuth": []} in op["security"] or {} in op["security"]


def test_schema_endpoint_serves_json_on_request(schema: dict) -> None:
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Bookstore API"
    for path in ["/api/books", "/api/books/{id}", "/api/books/search", "/api/orders", "/api/accounts/token"]:
        assert path in schema["paths"]


def test_schema_is_valid_openapi_for_schemathesis(db: None) -> None:
    loaded = schemathesis.openapi.from_wsgi(SCHEMA, application)

    loaded.validate()
    operations = [result.ok() for result in loaded.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert "GET /api/books" in labels
    assert "POST /api/books" in labels
    assert "PATCH /api/books/{id}" in labels


def test_schema_leaves_staff_only_operations_out(schema: dict) -> None:
    assert [path for path in schema["paths"] if path.startswith("/api/ops/")] == []
    assert not [op for _, _, op in _operations(schema) if op["operationId"].startswith("ops_")]


def test_schema_every_operation_has_a_unique_operation_id(schema: dict) -> None:
    ids = [operation["operationId"] for _, _, operation in _operations(schema)]

    assert len(ids) == len(set(ids))


def test_schema_documents_problem_responses_on_every_operation(schema: dict) -> None:
    assert set(schema["components"]["schemas"]["Problem"]["required"]) == {"type", "title", "status"}
    for path, method, operation in _operations(schema):
        responses = operation["responses"]
        for code in ["400", "401", "403", "429"]:
            assert PROBLEM in responses[code]["content"], (method, path, code)
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in operation:
            assert {"413", "415"} <= set(responses), (method, path)
        if method != "get":
            assert "409" in responses, (method, path)


def test_schema_every_operation_has_a_summary(schema: dict) -> None:
    summaries = {}
    for path, method, operation in _operations(schema):
        summary = operation.get("summary")
        assert isinstance(summary, str), (method, path)
        assert summary.strip(), (method, path)
        summaries[(method, path)] = summary

    assert len(set(summaries.values())) == len(summaries), "two operations share a summary"


def _header(schema: dict, value: dict) -> dict:
    """Return a header object, following its $ref into components/headers."""
    if "$ref" not in value:
        return value
    return schema["components"]["headers"][value["$ref"].rsplit("/", 1)[-1]]


def test_schema_documents_the_resilience_headers_on_every_operation(schema: dict) -> None:
    # Any operation may be matched by a policy staff write (a prefix of "/" matches all), so
    # every response of every operation can carry the RateLimit fields and the breaker state.
    for path, method, operation in _operations(schema):
        responses = operation["responses"]
        assert {"429", "503"} <= set(responses), (method, path)
        for code, response in responses.items():
            headers = {name: _header(schema, value) for name, value in response.get("headers", {}).items()}
            assert {"RateLimit-Policy", "RateLimit", "X-Circuit-Breaker-State"} <= set(headers), (method, path, code)
            assert headers["X-Circuit-Breaker-State"]["schema"]["enum"] == ["closed", "open", "half-open"]
            if code in ("429", "503"):
                assert headers["Retry-After"]["required"] is True, (method, path, code)
                assert headers["Retry-After"]["schema"]["type"] == "integer"
            else:
                assert "Retry-After" not in headers, (method, path, code)
            if method == "get" and code.startswith("2"):
                assert {"X-Stale-Response", "Age"} <= set(headers), (method, path, code)


def test_schema_documents_catalogue_writes_and_reads(schema: dict) -> None:
    books = schema["paths"]["/api/books"]
    detail = schema["paths"]["/api/books/{id}"]

    assert set(books["get"]["responses"]) >= {"200", "400", "404"}
    assert "201" in books["post"]["responses"]
    assert "204" in detail["delete"]["responses"]
    assert "409" in detail["delete"]["responses"]
    book_input = schema["components"]["schemas"]["BookInputRequest"]
    assert set(book_input["required"]) == {"isbn", "title", "price"}
    assert book_input["properties"]["stock"]["minimum"] == 0


def _request_schema(schema: dict, operation: dict) -> dict:
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def test_schema_says_put_replaces_the_whole_book_and_patch_changes_part(schema: dict) -> None:
    detail = schema["paths"]["/api/books/{id}"]
    replace, patch = _request_schema(schema, detail["put"]), _request_schema(schema, detail["patch"])

    every_field = {"isbn", "title", "authors", "description", "price", "stock", "published_on"}
    assert set(replace["properties"]) == set(patch["properties"]) == every_field
    assert set(replace["required"]) == every_field
    assert "required" not in patch
    # Empty values stay expressible, and no default stands in for a field left out.
    assert replace["properties"]["published_on"]["nullable"] is True
    assert replace["properties"]["stock"]["minimum"] == 0
    assert not any("default" in field for field in replace["properties"].values())
    assert "PATCH" in detail["put"]["description"]


def test_schema_documents_exactly_the_orders_the_api_takes(schema: dict) -> None:
    """Whatever the schema allows is accepted: generated clients and the fuzzer get past validation."""
    create = schema["paths"]["/api/orders"]["post"]

    assert set(create["requestBody"]["content"]) == {"application/json"}
    lines = _request_schema(schema, create)["properties"]["lines"]
    assert (lines["minItems"], lines["maxItems"]) == (1, 100)
    (key,) = [p for p in create["parameters"] if p["name"] == "Idempotency-Key"]
    assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, 255)
    assert key["schema"]["pattern"] == "^[!-~]([ -~]*[!-~])?$"
    assert "9999999999.99" in create["description"]
    assert "order total" in create["responses"]["422"]["description"]


@pytest.mark.parametrize("path", ["/api/books", "/api/books/search", "/api/orders"])
def test_schema_documents_list_pagination(schema: dict, path: str) -> None:
    operation = schema["paths"][path]["get"]
    names = {parameter["name"] for parameter in operation["parameters"]}
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]

    assert {"page", "page_size"} <= names
    assert set(page["required"]) >= {"count", "results"}
    assert page["properties"]["results"]["type"] == "array"


def test_schema_documents_search_and_filter_parameters(schema: dict) -> None:
    listing = {p["name"]: p for p in schema["paths"]["/api/books"]["get"]["parameters"]}
    search = {p["name"]: p for p in schema["paths"]["/api/books/search"]["get"]["parameters"]}

    assert {"author", "min_price", "max_price", "in_stock", "ordering"} <= set(listing)
    assert search["q"]["required"] is True
    assert search["q"]["schema"]["maxLength"] == 200


# --- the documentation pages ------------------------------------------------------------------


class _References(HTMLParser):
    """Collect every URL a page makes the browser load or link to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href", "srcset", "poster", "data", "action", "spec-url"} and value:
                self.urls.append(value)
        self._in_script = tag == "script" and not dict(attrs).get("src")
        if self._in_script:
            self.inline_scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_scripts[-1] += data


def _page(client: Client, path: str) -> tuple[str, _References]:
    response = client.get(path)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    parser = _References()
    parser.feed(html)
    return html, parser


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith("//")


@pytest.mark.parametrize("path", DOC_PAGES)
def test_docs_page_references_only_local_urls(client: Client, db: None, path: str) -> None:
    html, page = _page(client, path)

    assert page.urls, "the page loads its assets from somewhere"
    assert [url for url in page.urls if not _is_local(url)] == []
    # Nothing smuggled in through inline styles or scripts either (@import, url(), fetch of a CDN).
    hosts = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, flags=re.IGNORECASE)
    assert hosts == []


@pytest.mark.parametrize("path", DOC_PAGES)
def test_docs_page_assets_are_served(client: Client, db: None, settings: Settings, path: str) -> None:
    # Deployments run collectstatic; the suite has no STATIC_ROOT, so let WhiteNoise read the
    # same files through the finders. A fresh client builds its middleware with that setting.
    settings.WHITENOISE_USE_FINDERS = True
    fresh = Client()
    _, page = _page(fresh, path)

    assert any(url.endswith(".js") for url in page.urls)
    # Static files, and Redoc's bundle, which the app serves itself (bookstore/docs.py).
    for url in page.urls:
        assert url.startswith((settings.STATIC_URL, "/api/redoc/")), url
        assert fresh.get(url).status_code == 200, url
    for url in page.urls:
        response = fresh.get(url)
        assert response.status_code == 200, url
        assert b"".join(response.streaming_content if response.streaming else [response.content])


def test_swagger_ui_is_configured_without_the_online_validator(client: Client, db: None) -> None:
    _, page = _page(client, "/api/docs/")
    script = "\n".join(page.inline_scripts)

    assert re.search(r'"validatorUrl":\s*null', script), script[:500]
    assert 'url: "/api/schema/"' in script


def test_swagger_ui_and_redoc_point_at_the_local_schema(client: Client, db: None) -> None:
    _, swagger = _page(client, "/api/docs/")
    _, redoc = _page(client, "/api/redoc/")

    assert "/api/schema/" in "\n".join(swagger.inline_scripts)
    assert 'Redoc.init("/api/schema/"' in "\n".join(redoc.inline_scripts)
