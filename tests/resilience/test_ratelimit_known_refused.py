"""A worker refuses a client Redis just refused without asking again, until Redis would admit it."""

from __future__ import annotations

import time

import pytest
import redis
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from resilience.http.decision import limit_spec
from resilience.ops import metrics
from resilience.runtime import get_runtime, key_prefix
from resilience.runtime.policies import compile_policies
from resilience.stores.keys import top_key
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.resilience.test_breaker_known_open import RoundTrips, known, within
from tests.resilience.test_ratelimit_middleware import assert_quota_exceeded, make_policy, ratelimit_policies

A, B = "192.0.2.1", "192.0.2.2"

pytestmark = pytest.mark.usefixtures("fresh_runtime")


def key_of(policy_name: str, address: str) -> str:
    rule = next(r for r in compile_policies(0).ratelimits if r.name == policy_name)
    return limit_spec(rule, address).key


def limited(client: APIClient, address: str = A) -> str:
    """Refuse ``address`` until this process remembers it; return its limit key."""
    assert client.get("/api/books", REMOTE_ADDR=address).status_code == 429  # also subscribes
    within(10, known().live)
    assert client.get("/api/books", REMOTE_ADDR=address).status_code == 429  # remembered from here on
    key = key_of("books-ip", address)
    assert known().limited(key) is not None
    return key


def limited_count(policy: str) -> float:
    return metrics.ratelimit_decisions.labels(policy, "limited")._value.get()


def test_a_refused_client_is_refused_again_without_a_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    make_policy(name="books-ip", limit=1, period=60)
    client = APIClient()
    assert client.get("/api/books", REMOTE_ADDR=A).status_code == 200
    limited(client)
    trips = RoundTrips(monkeypatch, get_runtime())
    before = limited_count("books-ip")

    refused = [client.get("/api/books", REMOTE_ADDR=A) for _ in range(20)]

    assert trips.count == 0
    for response in refused:  # the same answer Redis gave: problem body, Retry-After, RateLimit fields
        params = assert_quota_exceeded(response, ["books-ip"])
        assert 55 <= params["t"] <= 60
        assert dict(ratelimit_policies(response))["books-ip"] == {"q": 1, "w": 60}
        assert 'desc="refused"' in response["Server-Timing"]
    assert limited_count("books-ip") - before == 20  # the metrics count every refusal
    # Another client is not affected: it asks Redis and is admitted.
    assert client.get("/api/books", REMOTE_ADDR=B).status_code == 200
    assert trips.count == 1


def test_the_refusal_lasts_exactly_as_long_as_redis_would_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    # A token bucket of one request per second: each refusal says when the next token comes.
    make_policy(name="books-ip", limit=1, period=1, algorithm="token_bucket")
    client = APIClient()
    assert client.get("/api/books", REMOTE_ADDR=A).status_code == 200
    limited(client)
    trips = RoundTrips(monkeypatch, get_runtime())

    statuses: list[int] = []
    deadline = time.monotonic() + 3
    while 200 not in statuses:
        statuses.append(client.get("/api/books", REMOTE_ADDR=A).status_code)
        assert time.monotonic() < deadline, "the remembered refusal outlived what Redis would refuse"
        time.sleep(0.005)

    assert set(statuses[:-1]) == {429}
    assert trips.count == 1  # only the request that found the token asked Redis


def test_a_reset_by_another_process_is_heard_at_once(other: redis.Redis) -> None:
    make_policy(name="books-ip", limit=1, period=60)
    client = APIClient()
    client.get("/api/books", REMOTE_ADDR=A)
    key = limited(client)
    runtime = get_runtime()
    assert isinstance(runtime.shared, RedisLimiterStore)

    # `manage.py ratelimit reset books-ip --key 192.0.2.1` on another machine.
    RedisLimiterStore(other, runtime.shared.version_key, runtime.shared.events_channel).reset([key])
    within(10, lambda: known().limited(key) is None)  # else remembered ~60 s

    assert client.get("/api/books", REMOTE_ADDR=A).status_code == 200


def test_a_reset_in_this_process_frees_the_client_on_the_next_request(db: None) -> None:
    make_policy(name="books-ip", limit=1, period=60)
    client = APIClient()
    client.get("/api/books", REMOTE_ADDR=A)
    limited(client)

    from resilience import services
    from resilience.models import RateLimitPolicy

    with pytest.MonkeyPatch.context() as patch:  # the commit callbacks run at once: no transaction here
        patch.setattr("django.db.transaction.on_commit", lambda fn: fn())
        services.policy_reset(policies=RateLimitPolicy.objects.filter(name="books-ip"), key=A)

    assert client.get("/api/books", REMOTE_ADDR=A).status_code == 200


def test_a_raised_limit_from_another_instance_is_obeyed_at_once(
    other: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = make_policy(name="books-ip", limit=1, period=60)
    client = APIClient()
    client.get("/api/books", REMOTE_ADDR=A)
    key = limited(client)
    runtime = get_runtime()
    assert isinstance(runtime.shared, RedisLimiterStore)
    monkeypatch.setattr("resilience.runtime.VERSION_CHECK_INTERVAL", 60.0)  # only the announcement tells

    type(policy).objects.filter(pk=policy.pk).update(limit=10)
    RedisLimiterStore(other, runtime.shared.version_key, runtime.shared.events_channel).bump_version()
    within(10, lambda: known().limited(key) is None)  # else remembered ~60 s

    client.get("/api/books", REMOTE_ADDR=A)  # learns the new version from this round trip
    assert client.get("/api/books", REMOTE_ADDR=A).status_code == 200


def test_refusals_from_memory_spend_no_other_policy_s_quota() -> None:
    make_policy(name="books-ip", limit=1, period=60, priority=10)
    make_policy(name="books-all", key="global", limit=5, period=60, priority=20)
    client = APIClient()
    assert client.get("/api/books", REMOTE_ADDR=A).status_code == 200
    limited(client)
    assert [client.get("/api/books", REMOTE_ADDR=A).status_code for _ in range(20)] == [429] * 20

    # A's refusals took nothing from the shared quota: four of five are left for everyone else.
    assert [client.get("/api/books", REMOTE_ADDR=f"198.51.100.{i}").status_code for i in range(1, 7)] == (
        [200] * 4 + [429] * 2
    )


def test_dashboard_counts_refusals_made_from_memory(staff: User, other: redis.Redis) -> None:
    make_policy(name="books-ip", limit=1, period=60)
    client = APIClient()
    client.get("/api/books", REMOTE_ADDR=A)
    limited(client)
    assert [client.get("/api/books", REMOTE_ADDR=A).status_code for _ in range(10)] == [429] * 10

    # Another worker's dashboard sees them within a second, written by this worker's flusher.
    minute = int(time.time() // 60)
    label = get_runtime().snapshot().ratelimits[0].label

    def counted() -> int:
        return int(other.hget(f"{key_prefix()}stats:{minute}", f"{label}:l") or 0)

    within(2.5, lambda: counted() == 12)
    assert other.zscore(top_key(key_prefix(), minute, label), A) == 12

    # And the dashboard read in this worker shows them exactly.
    web = Client()
    web.force_login(staff)
    data = web.get("/admin/resilience/dashboard/data.json").json()
    row = next(p for p in data["policies"] if p["name"] == "books-ip")
    assert row["totals"]["limited"] == 12
    assert data["top_keys"] == [{"policy": "books-ip", "key": A, "count": 12}]
