"""A token a worker has authenticated costs no query again; a revocation reaches every worker at once."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from accounts import token_cache
from accounts.models import User
from accounts.services import token_create, token_revoke_all
from tests.live import LiveServer, free_port, request

ME = "/api/accounts/me"
PROBLEM = "application/problem+json"


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_a_token_seen_before_costs_no_query(db: None, customer: User, token_cache_live: None) -> None:
    client = _client(token_create(user=customer).token)
    with CaptureQueriesContext(connection) as first:
        assert client.get(ME).status_code == 200

    with CaptureQueriesContext(connection) as second:
        response = client.get(ME)

    assert response.status_code == 200
    assert response.json()["id"] == customer.pk
    assert any("knox_authtoken" in query["sql"] for query in first)
    assert len(second) == 0, [query["sql"] for query in second]


def test_a_remembered_token_is_refused_once_it_expires(db: None, customer: User, token_cache_live: None) -> None:
    token = token_create(user=customer).token
    expiry = timezone.now() + timedelta(seconds=1)
    AuthToken.objects.filter(user=customer).update(expiry=expiry)
    client = _client(token)
    assert client.get(ME).status_code == 200
    with CaptureQueriesContext(connection) as remembered:
        assert client.get(ME).status_code == 200
    assert len(remembered) == 0  # answered from memory, which holds it for longer than the token lives

    while timezone.now() <= expiry:  # the token's lifetime runs out, well inside TOKEN_CACHE_SECONDS
        time.sleep(0.05)
    response = client.get(ME)

    assert response.status_code == 401
    assert response["Content-Type"] == PROBLEM
    assert not AuthToken.objects.filter(user=customer).exists()


def test_a_revocation_forgets_only_that_users_tokens(
    db: None, make_user: Callable[..., User], token_cache_live: None
) -> None:
    alice, bob = make_user(), make_user()
    alice_client, bob_client = _client(token_create(user=alice).token), _client(token_create(user=bob).token)
    for client in (alice_client, bob_client):
        assert client.get(ME).status_code == 200

    token_revoke_all(user=alice)
    with CaptureQueriesContext(connection) as bob_queries:
        assert bob_client.get(ME).status_code == 200

    assert alice_client.get(ME).status_code == 401
    assert len(bob_queries) == 0


@pytest.fixture
def redis_down(settings: Any) -> Iterator[None]:
    """Point this process's Redis client at a port nothing listens on, with a fresh token memory."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = dead
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": dead}}
    token_cache.reset()
    yield
    token_cache.reset()


def test_with_redis_down_nothing_is_remembered_and_sign_out_still_works(
    db: None,
    customer: User,
    redis_down: None,
    django_capture_on_commit_callbacks: Callable,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = _client(token_create(user=customer).token)
    assert client.get(ME).status_code == 200
    with CaptureQueriesContext(connection) as again:
        assert client.get(ME).status_code == 200
    assert any("knox_authtoken" in query["sql"] for query in again)  # asked the database again

    with django_capture_on_commit_callbacks(execute=True):  # the publish runs, and fails
        response = client.post("/api/accounts/logout")

    assert response.status_code == 204
    assert client.get(ME).status_code == 401
    assert any(getattr(record, "operation", None) == "publish_revocation" for record in caplog.records)


# --- across processes ---------------------------------------------------------------------------


def _hits(server: LiveServer) -> float:
    reply = request(server.port, "/metrics")  # type: ignore[arg-type]
    assert reply.status == 200
    found = re.search(rb'^bookstore_token_cache_lookups_total\{result="hit"\} ([0-9.e+]+)$', reply.body, re.M)
    assert found, "no bookstore_token_cache_lookups_total metric"
    return float(found[1])


def _pids_by_probe(server: LiveServer, probes: set[str]) -> dict[str, str]:
    """Return the worker pid that served each probe, once the access log has them all."""
    deadline = time.monotonic() + 10
    while True:
        pids = {line[-1]: line[0].strip("<>") for line in server.access_lines()}
        if probes <= pids.keys() or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def test_a_revocation_in_another_process_is_refused_by_every_worker_within_a_second(
    transactional_db: None, customer: User
) -> None:
    token = token_create(user=customer).token
    headers = {"Authorization": f"Token {token}"}
    with LiveServer(workers=2) as server:
        workers = {str(pid) for pid in server.worker_pids()}
        # Until each worker has answered the token a few times: the later answers come from memory.
        deadline = time.monotonic() + 30
        warm: list[str] = []
        while True:
            for _ in range(10):
                warm.append(f"warm-{len(warm)}")
                assert request(server.port, ME, headers={**headers, "X-Probe": warm[-1]}).status == 200  # type: ignore[arg-type]
            served = list(_pids_by_probe(server, set(warm)).values())
            if all(served.count(pid) >= 3 for pid in workers):
                break
            assert time.monotonic() < deadline, "a worker never served the token"
        assert _hits(server) >= len(workers)  # memory answered, on each worker

        revoked_at = time.monotonic()
        token_revoke_all(user=customer)  # another process than the workers: it commits, then publishes
        late: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def probe(n: int) -> None:
            while not stop.is_set():
                probe_id = f"after-{n}-{len(late)}"
                reply = request(server.port, ME, headers={**headers, "X-Probe": probe_id})  # type: ignore[arg-type]
                late.append((time.monotonic() - revoked_at, reply.status, probe_id))

        threads = [threading.Thread(target=probe, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)  # keep asking for a while past the promised second
        stop.set()
        for thread in threads:
            thread.join()
        pids = _pids_by_probe(server, {probe_id for _, _, probe_id in late})

    after_a_second = [(status, pids.get(probe_id)) for seconds, status, probe_id in late if seconds >= 1.0]
    assert after_a_second, "no request after the first second"
    assert {status for status, _ in after_a_second} == {401}
    assert {pid for _, pid in after_a_second} == workers  # every worker refused it
