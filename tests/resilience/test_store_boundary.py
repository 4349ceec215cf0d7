"""Any failure of the shared store is a store failure: each policy's on_store_failure applies, never a 500.

The client here is redis-py's cluster client on a real one-node Redis cluster, which the runtime
serves (stores/cluster.py) until the node goes away: then it raises RedisClusterException, which is
not a RedisError, for whatever the resilience layer asks of it. Any other client library's own
exceptions take the same path (resilience/stores/boundary.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.test import Client
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from rest_framework.test import APIClient

from accounts.models import User
from resilience import services
from resilience.engine.breaker import StoreUnavailable
from resilience.http.guards import breaker
from resilience.models import CircuitBreakerPolicy, RateLimitPolicy
from resilience.ops import metrics
from resilience.runtime import Runtime, events_channel, get_runtime, key_prefix, reset_runtime
from resilience.runtime.policies import breaker_config
from resilience.stores.boundary import store_call
from resilience.stores.redis_breaker import RedisBreakerStore
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.conftest import make_policy
from tests.live import HOST, RedisServer, free_port

REDUCED_CAPACITY = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"


@pytest.fixture
def cluster_server() -> Iterator[RedisServer]:
    """Return a private redis-server in cluster mode that serves every slot itself."""
    # The cluster bus port is named: by default it is the port + 10000, which may not exist.
    bus = ("--cluster-port", str(free_port()))
    server = RedisServer(args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", *bus))
    server.start()
    try:
        admin = server.client(decode_responses=True)
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while admin.execute_command("CLUSTER", "INFO").find("cluster_state:ok") < 0:
            assert time.monotonic() < deadline, "the one-node cluster never reported cluster_state:ok"
            time.sleep(0.05)
        admin.close()
        yield server
    finally:
        server.close()


@pytest.fixture
def cluster_runtime(db: None, cluster_server: RedisServer) -> Iterator[Runtime]:
    """Return this process's runtime with its shared stores on a cluster client; a fresh runtime afterwards."""
    reset_runtime()
    runtime = get_runtime()
    client = RedisCluster(host=HOST, port=cluster_server.port, socket_timeout=1)
    runtime.shared = RedisLimiterStore(  # type: ignore[assignment]  # the Redis store in its place
        client, version_key=f"{key_prefix()}resilience:policy-version", events_channel=events_channel()
    )
    runtime.breaker_shared = RedisBreakerStore(client, prefix=f"{key_prefix()}cb:", events_channel=events_channel())
    runtime.invalidate()
    yield runtime
    client.close()
    reset_runtime()


@pytest.fixture
def store_gone(cluster_runtime: Runtime, cluster_server: RedisServer) -> Runtime:
    """Return the cluster runtime after its one node stopped: every store call raises."""
    cluster_server.stop()
    return cluster_runtime


def store_errors(operation: str) -> float:
    return metrics.store_errors.labels(operation)._value.get()


def test_cluster_client_raises_what_is_not_a_redis_error(cluster_runtime: Runtime) -> None:
    """The premise: this real client's failure is of a class the layer used to let through."""
    client = cluster_runtime.shared.client  # type: ignore[attr-defined]  # the Redis store here
    script = client.register_script("return 1")

    with pytest.raises(RedisClusterException) as raised:
        script(keys=["a{1}", "b{2}"], args=[])
    with pytest.raises(StoreUnavailable):
        store_call("test", script, keys=["a{1}", "b{2}"], args=[])

    assert "RedisError" not in [cls.__name__ for cls in type(raised.value).__mro__]


def test_allow_policy_limits_in_process_when_the_store_raises_anything(store_gone: Runtime) -> None:
    make_policy(name="cluster-open", limit=2, on_store_failure="allow")
    before = store_errors("version") + store_errors("admit")
    client = APIClient()

    responses = [client.get("/api/books") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0]["RateLimit"] == '"cluster-open";r=1;t=3600'
    # The first call to fail (the policy-version check) gives the store up for the retry interval.
    assert store_errors("version") + store_errors("admit") == before + 1
    assert not store_gone.store_available()
    assert metrics.ratelimit_decisions.labels("cluster-open", "store_error")._value.get() >= 3


def test_deny_policy_answers_503_problem_when_the_store_raises_anything(store_gone: Runtime) -> None:
    make_policy(name="cluster-closed", limit=100, on_store_failure="deny")

    response = APIClient().get("/api/books")

    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == REDUCED_CAPACITY
    assert int(response["Retry-After"]) >= 1


def test_breakers_keep_working_per_process_when_the_store_raises_anything(store_gone: Runtime) -> None:
    policy = CircuitBreakerPolicy(
        name="cluster-cb", match_type="regex", pattern=r"^/api/books/\d+$", failure_statuses="404", failure_threshold=2
    )
    policy.full_clean()
    policy.save()
    get_runtime().invalidate()
    client = APIClient()

    statuses = [client.get("/api/books/999999").status_code for _ in range(3)]

    assert statuses == [404, 404, 503]  # tripped in this process after two failures
    assert client.get("/api/books/999999")["X-Circuit-Breaker-State"] == "open"


def test_code_guard_works_on_a_cluster_client(cluster_runtime: Runtime) -> None:
    # A breaker's two keys share a slot, so the cluster serves the guard.
    policy = CircuitBreakerPolicy(name="cluster-guard", match_type="code", pattern="cluster-guard")
    policy.full_clean()
    policy.save()
    get_runtime().invalidate()

    with breaker("cluster-guard"):
        pass

    # The success is reported with the next batch (resilience/runtime/outcomes.py).
    deadline = time.monotonic() + 5
    while cluster_runtime.breaker_shared.snapshot(breaker_config(policy)).window_calls != 1:
        assert time.monotonic() < deadline, "the success never reached the cluster"
        time.sleep(0.01)


def test_staff_pages_answer_when_the_store_raises_anything(store_gone: Runtime, staff: Any) -> None:
    CircuitBreakerPolicy.objects.create(name="cluster-page", pattern="/api/books")
    make_policy(name="cluster-page-rl", limit=10, key="global")
    web = Client()
    web.force_login(staff)

    health = APIClient().get("/health/breakers")
    dashboard = web.get("/admin/resilience/dashboard/data.json")

    # The store is given up at the first failure: both answer from the worker's own stores.
    assert health.status_code == 200
    rows = health.json()["breakers"]
    assert "cluster-page" in {b["name"] for b in rows}
    assert {b["store"] for b in rows} == {"process"}
    assert dashboard.status_code == 200
    data = dashboard.json()
    assert data["source"] == "process"
    assert [(b["name"], b["store"]) for b in data["breakers"]] == [("cluster-page", "process")]


def test_breaker_admin_actions_say_the_store_failed_instead_of_answering_500(db: None) -> None:
    policy = CircuitBreakerPolicy.objects.create(name="dead-store-cb", pattern="/api/books")
    superuser = User.objects.create_superuser(username="dead-root", email="dead@example.com", password="x-y-z-w-v")
    web = Client()
    web.force_login(superuser)
    reset_runtime()
    runtime = get_runtime()
    # Nothing listens on port 1: every call fails as a connection error, raised while the store is in use.
    dead = redis.Redis(host=HOST, port=1, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    runtime.breaker_shared = RedisBreakerStore(dead, prefix=f"{key_prefix()}cb:")
    try:
        response = web.post(
            "/admin/resilience/circuitbreakerpolicy/",
            {"action": "force_open", "_selected_action": [policy.pk]},
            follow=True,
        )
    finally:
        reset_runtime()

    assert response.status_code == 200
    assert "The breaker store failed" in response.content.decode()


def test_a_policy_change_is_saved_when_the_store_cannot_announce_it(
    store_gone: Runtime, django_capture_on_commit_callbacks: Any
) -> None:
    policy = make_policy(name="cluster-announce", limit=10)
    before = store_errors("bump_version")

    # The version bump and its announcement run after commit, when the store is gone.
    with django_capture_on_commit_callbacks(execute=True):
        services.policy_update(policies=[policy], enabled=False)

    assert not RateLimitPolicy.objects.get(pk=policy.pk).enabled
    assert store_errors("bump_version") == before + 1
    assert "RateLimit" not in APIClient().get("/api/books")  # this worker reloaded without the policy
