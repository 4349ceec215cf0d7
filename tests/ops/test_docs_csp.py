"""The API docs pages' Content-Security-Policy and Redoc's bundle without its CDN logo.

tests/e2e/test_dashboard_browser.py checks the same in Chromium: no request leaves the site and
the policy is never violated.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from django.test import Client

from bookstore.docs import REDOC_BUNDLE, REDOC_CDN_LOGO

DOC_PAGES = ["/api/docs/", "/api/redoc/"]


class _Inline(HTMLParser):
    """Collect the nonce of every inline <script> and <style> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.nonces: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "style" or (tag == "script" and not values.get("src")):
            self.nonces.append(values.get("nonce"))


def policy(client: Client, path: str) -> tuple[dict[str, list[str]], list[str | None]]:
    """Return a docs page's CSP by directive, and the nonces of its inline scripts and styles."""
    response = client.get(path)
    assert response.status_code == 200
    directives = {}
    for part in response["Content-Security-Policy"].split(";"):
        name, *values = part.split()
        directives[name] = values
    page = _Inline()
    page.feed(response.content.decode())
    return directives, page.nonces


@pytest.mark.parametrize("path", DOC_PAGES)
def test_docs_page_allows_only_its_own_origin_and_its_nonce(client: Client, db: None, path: str) -> None:
    directives, nonces = policy(client, path)
    _, again = policy(client, path)

    assert directives["default-src"] == ["'self'"]
    [nonce] = set(nonces)
    assert nonce, "every inline script and style carries the one nonce"
    assert len(nonces) >= 2
    assert directives["script-src"] == ["'self'", f"'nonce-{nonce}'"]
    assert directives["style-src"] == ["'self'", f"'nonce-{nonce}'"]
    assert set(again) != {nonce}, "a fresh nonce per response"
    for name, values in directives.items():
        assert not {"'unsafe-inline'", "'unsafe-eval'"} & set(values), name
        assert not [value for value in values if re.match(r"https?:", value)], name
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]


def test_redoc_bundle_is_the_sidecars_without_the_cdn_logo(client: Client, db: None) -> None:
    response = client.get("/api/redoc/redoc.standalone.js")
    body = b"".join(response.streaming_content) if response.streaming else response.content
    again = client.get("/api/redoc/redoc.standalone.js", HTTP_IF_NONE_MATCH=response["ETag"])

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert REDOC_CDN_LOGO in REDOC_BUNDLE.read_bytes(), "the sidecar still ships the address this removes"
    assert REDOC_CDN_LOGO not in body
    assert len(body) == len(REDOC_BUNDLE.read_bytes()) - len(REDOC_CDN_LOGO)
    assert "max-age=86400" in response["Cache-Control"]
    assert again.status_code == 304
