"""deploy/nginx in front of real gunicorn: slow clients held at the edge, nginx's errors in problem+json.

Real nginx (Debian's package) runs the deploy template rendered with free loopback ports
(tests/ops/nginx.py); the app behind it is real gunicorn with the default configuration.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from bookstore.problems import PROBLEM_CONTENT_TYPE, problem_type
from resilience.models import RateLimitPolicy
from tests.live import HOST, LiveServer, Reply, free_port, request
from tests.ops.nginx import PROBLEMS, NginxServer
from tests.ops.slow_headers import probe_seconds, slow_header_clients, still_open

pytestmark = [pytest.mark.live]

# A probe through nginx while slow clients hang on: the promise is "not delayed beyond" this (s).
PROBE_BUDGET = 0.100


def problem(reply: Reply) -> dict[str, Any]:
    """Return the reply's problem document, checking its content type and status member."""
    assert reply.header("Content-Type") == PROBLEM_CONTENT_TYPE, (reply.status, reply.headers, reply.body[:200])
    body = json.loads(reply.body)
    assert body["status"] == reply.status
    assert body["title"]
    return body


@pytest.fixture
def silent_upstream() -> Iterator[int]:
    """Return the port of a server that accepts connections and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        sock.listen(64)  # the kernel completes handshakes; nobody ever reads or writes
        yield sock.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_slow_header_clients_do_not_delay_probes_through_nginx(live_servers: Any, nginx: Any) -> None:
    app: LiveServer = live_servers(workers=2, probe=True)
    proxy: NginxServer = nginx(upstream=f"{HOST}:{app.port}")

    with slow_header_clients(proxy.port, 50) as slow:
        seconds = probe_seconds(proxy.port, 20, timeout=5)
        held = sum(still_open(sock) for sock in slow)

    assert held == 50, "every slow client is still connected: the probes ran while all 50 hung on"
    assert max(seconds) < PROBE_BUDGET, [f"{s * 1000:.1f} ms" for s in seconds]


def test_nginx_answers_502_in_problem_json_when_the_app_is_down(nginx: Any) -> None:
    proxy: NginxServer = nginx(upstream=f"{HOST}:{free_port()}")  # nothing listens there

    reply = request(proxy.port, "/api/books", headers={"X-Request-ID": "edge-test-502"})

    assert reply.status == 502
    assert problem(reply)["type"] == problem_type("bad-gateway")
    assert reply.header("X-Request-ID") == "edge-test-502"


def test_nginx_answers_504_in_problem_json_when_the_app_does_not_answer(nginx: Any, silent_upstream: int) -> None:
    proxy: NginxServer = nginx(upstream=f"{HOST}:{silent_upstream}", read_timeout="1s")

    reply = request(proxy.port, "/api/books")

    assert reply.status == 504
    assert problem(reply)["type"] == problem_type("gateway-timeout")
    assert reply.header("X-Request-ID")
    assert 1.0 <= reply.seconds < 5.0


@pytest.mark.django_db(transaction=True)
def test_nginx_refuses_what_is_too_large_in_problem_json_and_the_app_never_sees_it(
    live_servers: Any, nginx: Any
) -> None:
    app: LiveServer = live_servers(workers=1, probe=True)
    proxy: NginxServer = nginx(upstream=f"{HOST}:{app.port}")
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    json_post = {"Content-Type": "application/json"}

    # A body of exactly the app's limit reaches the app, which reads it (and finds no JSON in it).
    at_limit = request(
        proxy.port, "/api/accounts/token", method="POST", body=b" " * limit, headers={**json_post, "X-Probe": "at"}
    )
    over = request(
        proxy.port,
        "/api/accounts/token",
        method="POST",
        body=b" " * (limit + 1),
        headers={**json_post, "X-Probe": "over"},
    )
    long_line = request(proxy.port, "/api/books?q=" + "a" * 9000, headers={"X-Probe": "line"})
    big_field = request(proxy.port, "/api/books", headers={"X-Big": "a" * 9000, "X-Probe": "field"})
    many_fields = request(
        proxy.port, "/api/books", headers={**{f"X-Big-{n}": "a" * 7000 for n in range(5)}, "X-Probe": "fields"}
    )

    assert at_limit.status == 400
    assert problem(at_limit)["type"] == problem_type("malformed-request")
    assert over.status == 413
    assert problem(over)["type"] == problem_type("payload-too-large")
    assert long_line.status == 414
    assert problem(long_line)["type"] == problem_type("uri-too-long")
    for reply in (big_field, many_fields):
        assert reply.status == 431
        assert problem(reply)["type"] == problem_type("request-header-fields-too-large")
    served = {fields[-1] for fields in app.access_lines()}
    assert "at" in served
    assert not served & {"over", "line", "field", "fields"}, "nginx refused them without passing them on"


@pytest.mark.django_db(transaction=True)
def test_nginx_passes_the_apps_own_errors_through_untouched(live_servers: Any, nginx: Any) -> None:
    # No database behind this app: its readiness probe answers its own 503, naming the failed check.
    app: LiveServer = live_servers(
        workers=1, probe=True, env_overrides={"DATABASE_URL": f"postgres://postgres@{HOST}:{free_port()}/none"}
    )
    proxy: NginxServer = nginx(upstream=f"{HOST}:{app.port}")

    reply = request(proxy.port, "/health/ready")

    assert reply.status == 503
    assert problem(reply)["checks"]["database"].startswith("error")


@pytest.mark.django_db(transaction=True)
def test_nginx_tells_the_app_the_client_address_and_scheme(live_servers: Any, nginx: Any) -> None:
    policy = RateLimitPolicy(name="edge-ip", match_type="prefix", pattern="/api/books", key="ip", limit=50, period=60)
    policy.full_clean()
    policy.save()
    # The app sends HSTS only on requests it believes came over HTTPS.
    app: LiveServer = live_servers(
        workers=1, probe=True, env_overrides={"TRUSTED_PROXY_COUNT": "1", "SECURE_HSTS_SECONDS": "60"}
    )
    proxy: NginxServer = nginx(upstream=f"{HOST}:{app.port}")
    forged_https = {"X-Forwarded-Proto": "https"}

    def through_nginx(source: str, forged_address: str) -> Reply:
        reply = request(
            proxy.port, "/api/books", source=source, headers={"X-Forwarded-For": forged_address, **forged_https}
        )
        assert reply.status == 200, (reply.status, reply.body[:200])
        return reply

    first = through_nginx("127.0.9.1", "203.0.113.1")
    second = through_nginx("127.0.9.1", "203.0.113.2")  # the same client, another forged address
    other = through_nginx("127.0.9.2", "203.0.113.1")  # another client, the same forged address
    direct = request(app.port, "/api/books", headers=forged_https)

    # Counted by the address nginx saw, whatever the client wrote before it.
    assert [remaining(first), remaining(second), remaining(other)] == [49, 48, 49]
    # nginx said http, whatever the client claimed; the app does believe the header from a proxy.
    assert first.header("Strict-Transport-Security") is None
    assert direct.header("Strict-Transport-Security") == "max-age=60"


def remaining(reply: Reply) -> int:
    """Return the r= of the reply's RateLimit field (one policy)."""
    field = reply.header("RateLimit") or ""
    return int(field.split(";r=", 1)[1].split(";", 1)[0])


@pytest.mark.django_db(transaction=True)
def test_nginx_compresses_api_answers(live_servers: Any, nginx: Any) -> None:
    app: LiveServer = live_servers(workers=1, probe=True)
    proxy: NginxServer = nginx(upstream=f"{HOST}:{app.port}")

    reply = request(proxy.port, "/api/schema/", headers={"Accept-Encoding": "gzip"})

    assert reply.status == 200
    assert reply.header("Content-Encoding") == "gzip"
    assert b"openapi" in gzip.decompress(reply.body)


def test_nginx_problem_bodies_use_the_apps_problem_types() -> None:
    for path in sorted(PROBLEMS.glob("*.json")):
        body = json.loads(path.read_text())
        assert body["status"] == int(path.stem)
        slug = body["type"].rsplit("/", 1)[-1]
        assert body["type"] == problem_type(slug), "the app's PROBLEM_TYPE_BASE default"
        assert set(body) == {"type", "title", "status", "detail"}
