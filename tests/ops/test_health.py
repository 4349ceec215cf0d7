"""Health probes: liveness never touches a dependency; readiness names the dependency that fails."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from django.test import Client, RequestFactory
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pytest_django.fixtures import Settings

from bookstore import health
from resilience import services
from resilience.engine.breaker import State
from resilience.models import CircuitBreakerPolicy, RateLimitPolicy
from resilience.runtime.policies import compile_policies
from tests.live import HOST, LiveServer, RedisServer, database_url, request


def test_live_answers_without_database_or_redis(monkeypatch: pytest.MonkeyPatch, rf: RequestFactory) -> None:
    # No db fixture: pytest-django refuses any query, and Redis access would raise here.
    def no_redis(*args: object) -> None:
        raise AssertionError("liveness must not touch Redis")

    monkeypatch.setattr("django_redis.get_redis_connection", no_redis)
    for method in ("get", "head"):
        response = health.HealthCheckMiddleware(lambda r: pytest.fail("reached the rest of the stack"))(
            getattr(rf, method)("/health/live")
        )
        assert response.status_code == 200
    assert Client().get("/health/live").json() == {"status": "ok"}


def test_ready_answers_ok_when_database_and_redis_answer(db: None) -> None:
    response = Client().get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    assert response["Cache-Control"].startswith("max-age=0")


def broken() -> None:
    raise ConnectionRefusedError("connection refused")


def status_gauge() -> dict[str, float | None]:
    return {s: REGISTRY.get_sample_value("bookstore_health_status", {"status": s}) for s in health.STATUSES}


def test_ready_is_a_problem_naming_the_failed_check(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "checks", lambda: {"database": broken, "redis": health.check_redis})

    response = Client().get("/health/ready")

    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["checks"] == {"database": "error: ConnectionRefusedError: connection refused", "redis": "ok"}
    assert body["detail"] == "Failing: database."
    assert status_gauge() == {"ok": 0, "degraded": 0, "not-ready": 1}


def test_ready_is_degraded_not_failing_when_redis_fails(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The API keeps serving on per-worker limits: pulling the instance would make it an outage.
    monkeypatch.setattr(health, "checks", lambda: {"database": health.check_database, "redis": broken})

    response = Client().get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "checks": {"database": "ok", "redis": "error: ConnectionRefusedError: connection refused"},
    }
    assert status_gauge() == {"ok": 0, "degraded": 1, "not-ready": 0}
    assert REGISTRY.get_sample_value("bookstore_health_check_up", {"check": "redis"}) == 0


def test_ready_gives_up_on_a_hung_check_within_the_timeout(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def hung() -> None:
        time.sleep(3)

    monkeypatch.setattr(health, "checks", lambda: {"database": health.check_database, "redis": hung})
    monkeypatch.setattr("django.conf.settings.HEALTH_CHECK_TIMEOUT", 0.2, raising=False)

    began = time.monotonic()
    response = Client().get("/health/ready")

    assert time.monotonic() - began < 1.5
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"] == {"database": "ok", "redis": "error: no answer within 0.2 s"}


# --- what outsiders may see -------------------------------------------------------------------

OUTSIDER = "203.0.113.50"
TOKEN = "health-scrape-token"


@pytest.fixture
def failing_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise ConnectionRefusedError("connection to db.internal:5432 refused")

    monkeypatch.setattr(health, "checks", lambda: {"database": broken, "redis": health.check_redis})


def test_ready_tells_an_outsider_only_that_it_is_not_ready_and_insiders_why(
    db: None, failing_database: None, settings: Settings
) -> None:
    settings.METRICS_BEARER_TOKEN = TOKEN

    response = Client(REMOTE_ADDR=OUTSIDER).get("/health/ready")

    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response.json() == {
        "type": "https://bookstore.example/problems/not-ready",
        "title": "Not ready",
        "status": 503,
        "instance": "/health/ready",
    }
    assert b"db.internal" not in response.content
    assert "private" in response["Cache-Control"]
    assert "Authorization" in response["Vary"]
    # The metrics networks and the bearer token still get the failure named.
    local = Client(REMOTE_ADDR="127.0.0.1").get("/health/ready")
    scraper = Client(REMOTE_ADDR=OUTSIDER).get("/health/ready", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    for insider in (local, scraper):
        assert insider.status_code == 503
        assert insider.json()["checks"]["database"].startswith("error: ConnectionRefusedError")


def test_ready_answers_an_outsider_ok_with_a_minimal_body(db: None) -> None:
    response = Client(REMOTE_ADDR=OUTSIDER).get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_judges_the_client_behind_a_loopback_proxy(db: None, failing_database: None, settings: Settings) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = Client(REMOTE_ADDR="127.0.0.1")

    remote = proxy.get("/health/ready", HTTP_X_FORWARDED_FOR="203.0.113.50:40000")
    local = proxy.get("/health/ready", HTTP_X_FORWARDED_FOR="127.0.0.1:40000")

    assert "checks" not in remote.json()
    assert "checks" in local.json()


def test_breakers_health_keeps_breaker_names_from_outsiders(db: None, settings: Settings) -> None:
    CircuitBreakerPolicy.objects.create(name="payments-gateway", match_type="code", pattern="")
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = Client(REMOTE_ADDR="127.0.0.1")

    outsider = proxy.get("/health/breakers", HTTP_X_FORWARDED_FOR=OUTSIDER)
    insider = proxy.get("/health/breakers", HTTP_X_FORWARDED_FOR="127.0.0.1")

    assert outsider.status_code == 200
    assert outsider.json() == {"status": "ok"}
    assert [row["name"] for row in insider.json()["breakers"]] == ["database", "payments-gateway"]
    assert "no-store" in outsider["Cache-Control"]


def test_ready_says_not_ready_at_once_while_the_database_breaker_is_open(transactional_db: None) -> None:
    services.breaker_force(names=["database"], state=State.FORCED_OPEN)
    try:
        began = time.monotonic()
        response = Client().get("/health/ready")
        seconds = time.monotonic() - began
    finally:
        services.breaker_reset(names=["database"])

    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("error: DatabaseUnavailable: the database circuit breaker")
    assert response.json()["checks"]["redis"] == "ok"
    assert seconds < 0.5


@pytest.mark.default_policies
def test_default_policies_do_not_match_the_probes(db: None) -> None:
    assert RateLimitPolicy.objects.exists(), "the data migration's default policies are expected here"
    policies = compile_policies(version=0)
    for path in ("/health/live", "/health/ready"):
        assert policies.match_ratelimits("GET", path, lambda: ("", frozenset())) == []
        assert policies.match_breakers("GET", path, lambda: ("", frozenset())) == []


def test_probes_are_not_limited_even_by_a_catch_all_policy(db: None) -> None:
    from resilience.runtime import get_runtime

    RateLimitPolicy.objects.create(name="everything", match_type="prefix", pattern="/", key="global", limit=0)
    get_runtime().invalidate()
    client = Client()

    assert client.get("/api/books").status_code == 429
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").status_code == 200


# --- real processes ------------------------------------------------------------------------------


@pytest.fixture
def silent_postgres() -> Iterator[str]:
    """Return a postgres:// URL whose server accepts TCP connections and never says a word (a hung host)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen(64)
    try:
        yield f"postgres://postgres@{HOST}:{sock.getsockname()[1]}/bookstore"
    finally:
        sock.close()


@pytest.mark.live
def test_ready_names_the_database_when_postgres_hangs(
    live_servers: Callable[..., LiveServer], silent_postgres: str
) -> None:
    server = live_servers(workers=1, probe=True, env_overrides={"DATABASE_URL": silent_postgres})

    began = time.monotonic()
    reply = request(server.port, "/health/ready")
    seconds = time.monotonic() - began

    assert reply.status == 503, reply.body
    assert reply.header("Content-Type") == "application/problem+json"
    checks = json.loads(reply.body)["checks"]
    assert checks["database"].startswith("error: ")
    assert checks["redis"] == "ok"
    assert seconds < 3, "a hung database must cost the probe about one timeout"
    live = request(server.port, "/health/live")
    assert (live.status, live.body) == (200, b'{"status": "ok"}')


def degraded_gauge(server: LiveServer) -> float | None:
    metrics = request(server.port, "/metrics").body.decode()
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "bookstore_health_status" and sample.labels == {"status": "degraded"}:
                return sample.value
    return None


@pytest.mark.live
def test_ready_names_redis_when_redis_is_unreachable(live_servers: Callable[..., LiveServer]) -> None:
    server = live_servers(
        workers=1, probe=True, env_overrides={"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": database_url()}
    )

    reply = request(server.port, "/health/ready")

    assert reply.status == 200, reply.body
    body = json.loads(reply.body)
    assert body["status"] == "degraded"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error: ")
    assert degraded_gauge(server) == 1
    assert request(server.port, "/health/live").status == 200
    assert request(server.port, "/api/books").status == 200, "the API serves without Redis"


@pytest.mark.live
def test_ready_is_degraded_when_redis_answers_ping_but_refuses_scripts(
    live_servers: Callable[..., LiveServer],
) -> None:
    # Scripts switched off as an operator can: PING answers, every admission fails.
    refusing = ("--rename-command", "EVALSHA", "", "--rename-command", "EVAL", "")
    with RedisServer(args=refusing) as redis_server:
        assert redis_server.client().ping()
        server = live_servers(workers=1, probe=True, env_overrides={"REDIS_URL": redis_server.url})

        reply = request(server.port, "/health/ready")

        assert reply.status == 200, reply.body
        body = json.loads(reply.body)
        assert body["status"] == "degraded"
        assert body["checks"]["database"] == "ok"
        assert "unknown command" in body["checks"]["redis"]
        assert degraded_gauge(server) == 1
        assert request(server.port, "/api/books").status == 200, "the API serves on per-worker limits"


@pytest.mark.live
def test_api_answers_503_problem_when_postgres_is_down(live_servers: Callable[..., LiveServer]) -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    dead = "postgres://postgres@127.0.0.1:1/bookstore"
    server = live_servers(workers=1, probe=True, env_overrides={"DATABASE_URL": dead})

    for method, path, body in [
        ("GET", "/api/books", None),
        ("GET", "/api/books/search?q=river", None),
        ("POST", "/api/accounts/token", b'{"username": "a", "password": "b"}'),
    ]:
        began = time.monotonic()
        reply = request(server.port, path, method=method, body=body, headers={"Content-Type": "application/json"})
        assert reply.status == 503, (path, reply.status, reply.body[:300])
        assert reply.header("Content-Type") == "application/problem+json"
        problem = json.loads(reply.body)
        assert problem["type"].endswith("/database-unavailable")
        # The database breaker's time to half-open: its built-in open period is one second.
        assert reply.header("Retry-After") == "1"
        # Each database access waits at most DB_POOL_TIMEOUT (2 s) for a connection; a request makes at most three.
        assert time.monotonic() - began < 7.5
    assert request(server.port, "/health/live").status == 200
