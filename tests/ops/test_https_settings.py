"""HTTPS behind the reverse proxy: the README's production environment passes `check --deploy`, and an
admin login that came over TLS (as the proxy reports it) passes CSRF."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

from accounts.models import User
from tests.live import HOST, ROOT, LiveServer, with_live_password

README = ROOT / "README.md"
# Every warning `check --deploy` gave before these settings were read from the environment. With the
# session and CSRF middleware subclassed (bookstore/lean.py), Django names the insecure session
# cookie W010 rather than W012, and the CSRF cookie's warning is the project's own check.
HTTPS_WARNINGS = ("security.W004", "security.W008", "security.W010", "bookstore.W016")
# What the README writes as a placeholder, and what the check runs with instead (nothing connects).
PLACEHOLDERS = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "DATABASE_URL": "postgres://bookstore@127.0.0.1:5432/bookstore",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def documented_production_environment() -> dict[str, str]:
    """Return the variables of the README's production gunicorn command, placeholders filled in."""
    section = README.read_text().split("\n## Production\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's Production section starts with the command"
    env: dict[str, str] = {}
    for word in shlex.split(block.group(1).replace("\\\n", " ")):
        name, equals, value = word.partition("=")
        if not equals or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            break
        env[name] = PLACEHOLDERS[name] if "…" in value else value
    return env


def check_deploy(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `manage.py check --deploy --fail-level WARNING` with only env (and PATH) set."""
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **env,
        # A folder of ours: the documented /run/bookstore-metrics does not exist here.
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "BOOKSTORE_VAR_DIR": str(tmp_path / "var"),
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_passes_with_the_documented_production_environment(tmp_path: Path) -> None:
    env = documented_production_environment()
    assert env["HTTPS"] == "true"
    assert env["TRUSTED_PROXY_COUNT"] == "1"

    result = check_deploy(env, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_without_the_https_settings(tmp_path: Path) -> None:
    env = {
        name: value
        for name, value in documented_production_environment().items()
        if name != "HTTPS" and not name.startswith("SECURE_")
    }

    result = check_deploy(env, tmp_path)

    assert result.returncode != 0
    for warning in HTTPS_WARNINGS:
        assert warning in result.stderr, result.stderr


# A loopback address other than 127.0.0.1 stands for the proxy's host.
PROXY_ADDRESS = "127.0.0.2"


class _FromAddress(requests.adapters.HTTPAdapter):
    """Connect from a given local address."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


class _Form(HTMLParser):
    """Collect the hidden inputs of a page (the admin login's CSRF token)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.hidden[values["name"] or ""] = values.get("value") or ""


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_admin_login_behind_a_tls_proxy_passes_csrf(live_servers: Any) -> None:
    with_live_password(User.objects.create_superuser(username="tls-admin", email="tls@example.com", password=None))
    env = {"HTTPS": "true", "TRUSTED_PROXY_COUNT": "1", "SECURE_HSTS_SECONDS": "3600"}
    server: LiveServer = live_servers(workers=1, probe=True, env_overrides=env)
    origin = f"https://{HOST}:{server.port}"
    # What the TLS-terminating proxy adds to every request it passes on (deploy/nginx).
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    # The proxy on another host (compose's nginx container): gunicorn believes X-Forwarded-Proto
    # itself only from its forwarded_allow_ips (127.0.0.1), which would hide what Django does.
    proxy = requests.Session()
    proxy.mount("http://", _FromAddress(PROXY_ADDRESS))

    page = proxy.get(f"{server.url}/admin/login/", headers=proxied, timeout=10)
    form = _Form()
    form.feed(page.text)
    # The CSRF cookie is Secure, which a client only sends over https: send it as a browser would.
    cookie = f"csrftoken={page.cookies['csrftoken']}"
    login = proxy.post(
        f"{server.url}/admin/login/?next=/admin/",
        data={**form.hidden, "username": "tls-admin", "password": "correct-horse-battery"},
        headers={**proxied, "Origin": origin, "Referer": f"{origin}/admin/login/", "Cookie": cookie},
        allow_redirects=False,
        timeout=10,
    )
    plain = proxy.get(f"{server.url}/admin/login/", headers={"X-Forwarded-For": "203.0.113.9"},
                      allow_redirects=False, timeout=10)  # fmt: skip
    # Prometheus scrapes the app itself over plain HTTP, from the private network.
    scrape = proxy.get(f"{server.url}/metrics", allow_redirects=False, timeout=10)

    assert login.status_code == 302, login.text[:300]
    assert login.headers["Location"] == "/admin/"
    assert "sessionid=" in login.headers["Set-Cookie"]
    assert page.status_code == 200
    assert page.headers["Strict-Transport-Security"] == "max-age=3600"
    assert "Secure" in page.headers["Set-Cookie"], "the CSRF cookie is only ever sent back over https"
    # A request the proxy says came over plain HTTP is sent to https.
    assert plain.status_code == 301
    assert plain.headers["Location"] == f"{origin}/admin/login/"
    assert scrape.status_code == 200
