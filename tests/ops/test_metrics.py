"""/metrics: who may read it, and what django-prometheus adds, summed across gunicorn workers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest
from django.core.cache import cache
from django.db import connections
from django.test import Client, override_settings
from django_prometheus.db.backends.postgresql import base as instrumented
from prometheus_client.parser import text_string_to_metric_families
from pytest_django.fixtures import Settings

from resilience.models import CircuitBreakerPolicy
from tests.live import LiveServer, request

OUTSIDER = "10.1.2.3"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of a Prometheus text page by (name, sorted labels); a repeated series fails."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"series {key} reported twice"
            found[key] = sample.value
    return found


def total(page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in page.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def test_metrics_refuse_an_address_outside_the_allowed_networks(db: None) -> None:
    client = Client(REMOTE_ADDR=OUTSIDER)

    assert client.get("/metrics").status_code == 403
    # A forwarded-for header is the client's word, not an address we trust.
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 403


@pytest.mark.parametrize(
    ("header", "meta", "remote", "local"),
    [
        ("x-forwarded-for", "HTTP_X_FORWARDED_FOR", "203.0.113.9:51234", "127.0.0.1:40000"),
        ("x-forwarded-for", "HTTP_X_FORWARDED_FOR", "[2001:db8::9]:443", "[::1]:40000"),
        ("forwarded", "HTTP_FORWARDED", 'for="203.0.113.9:51234"', 'for="127.0.0.1:40000"'),
        ("forwarded", "HTTP_FORWARDED", "for=unknown", 'for="[::1]"'),
        ("forwarded", "HTTP_FORWARDED", "for=_hidden", "for=127.0.0.1"),
    ],
)
def test_metrics_refuse_a_remote_client_arriving_through_a_loopback_proxy(
    db: None, settings: Settings, header: str, meta: str, remote: str, local: str
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    settings.TRUSTED_PROXY_HEADER = header
    proxy = Client(REMOTE_ADDR="127.0.0.1")

    assert proxy.get("/metrics", **{meta: remote}).status_code == 403
    assert proxy.get("/health/breaker_metrics", **{meta: remote}).status_code == 403
    # A client on the machine itself, through the same proxy, may still scrape.
    assert proxy.get("/metrics", **{meta: local}).status_code == 200


@override_settings(METRICS_BEARER_TOKEN="scrape-token-for-tests")
def test_metrics_answer_the_bearer_token_from_anywhere(db: None) -> None:
    client = Client(REMOTE_ADDR=OUTSIDER)

    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-for-tests")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")


def test_database_and_cache_are_instrumented_and_still_pooled(db: None) -> None:
    connection = connections["default"]
    assert connection.vendor == "postgresql"
    # The breaker's backend (resilience/db/postgresql) is django-prometheus's, guarded.
    assert isinstance(connection, instrumented.DatabaseWrapper)
    assert connection.pool is not None, "Django's psycopg pool must survive the instrumented engine"
    cache.get("ops-test-missing-key")

    page = samples(Client().get("/metrics").content.decode())

    assert total(page, "django_db_execute_total", vendor="postgresql") > 0
    assert total(page, "django_cache_get_total", backend="redis") > 0
    assert total(page, "django_http_requests_total_by_method_total", method="GET") > 0


@pytest.mark.live
def test_metrics_under_four_workers_sum_requests_and_agree_on_breakers(
    live_servers: Callable[..., LiveServer],
) -> None:
    CircuitBreakerPolicy.objects.create(name="ops-payments", match_type="code", pattern="")
    server = live_servers(workers=4)
    before = samples(request(server.port, "/metrics").body.decode())

    sent = 40
    for _ in range(sent):
        assert request(server.port, "/health/live", headers={"X-Probe": "ops-live"}).status == 200
    after = samples(request(server.port, "/metrics").body.decode())

    assert len(server.served_pids("ops-live")) > 1, "the requests should have been spread over workers"
    assert not any("pid" in dict(labels) for _, labels in after), "multiprocess series are summed, not per pid"
    # Every probe, plus the scrape itself, counted once whichever worker served it.
    counted = total(after, "django_http_requests_before_middlewares_total") - total(
        before, "django_http_requests_before_middlewares_total"
    )
    assert counted == sent + 1
    assert total(after, "django_http_requests_total_by_method_total", method="GET") > 0
    states: dict[str, dict[str, float]] = defaultdict(dict)
    for (name, labels), value in after.items():
        if name == "bookstore_breaker_state":
            states[dict(labels)["breaker"]][dict(labels)["state"]] = value
    assert set(states) == {"ops-payments", "database"}
    assert states["database"]["closed"] == 1.0
    assert states["ops-payments"] == {
        "closed": 1.0,
        "open": 0.0,
        "half-open": 0.0,
        "forced-open": 0.0,
        "forced-closed": 0.0,
    }
