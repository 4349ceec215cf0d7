"""Concurrency policies (bulkheads): slots in Redis as leases, waiting in arrival order, refusals, fallbacks.

Slots other workers hold are taken straight from the shared store (as their requests would take
them), so each test knows exactly how many are held; the request under test goes through the
middleware or the `bulkhead()` guard against the test run's real Redis.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from resilience import services
from resilience.engine.breaker import State
from resilience.http.bulkheads import ConcurrencyLimited, bulkhead, slots_base
from resilience.models import CircuitBreakerPolicy, ConcurrencyPolicy, PolicyVersion, RateLimitPolicy
from resilience.ops import metrics
from resilience.runtime import Runtime, get_runtime, reset_runtime
from resilience.runtime.policies import compile_concurrency
from resilience.stores.redis_concurrency import RedisConcurrencyStore
from tests.conftest import make_concurrency
from tests.live import HOST, RedisServer, free_port

SEARCH = "/api/books/search?q=tolkien"
CONCURRENCY_LIMIT = "https://bookstore.example/problems/concurrency-limit"


def make_policy(**fields: Any) -> ConcurrencyPolicy:
    """Create slots on the book search, shared by everyone, unless told otherwise."""
    fields.setdefault("name", "search-slots")
    fields.setdefault("match_type", "prefix")
    fields.setdefault("pattern", "/api/books/search")
    fields.setdefault("key", "global")
    return make_concurrency(**fields)


def store() -> RedisConcurrencyStore:
    shared = get_runtime().concurrency_shared
    assert shared is not None, "these tests run against Redis (TEST_REDIS_URL)"
    return shared


def base(policy: ConcurrencyPolicy, value: str = "all") -> str:
    return slots_base(compile_concurrency(policy), value)


def hold(policy: ConcurrencyPolicy, count: int, value: str = "all") -> list[str]:
    """Take count slots as other workers' requests would; return their lease ids."""
    leases = []
    for _ in range(count):
        lease = uuid.uuid4().hex
        attempt = store().acquire(base(policy, value), lease, policy.max_in_flight, policy.lease_seconds, 0)
        assert attempt.acquired
        leases.append(lease)
    return leases


def in_flight(policy: ConcurrencyPolicy, value: str = "all") -> int:
    return store().status(base(policy, value))[0]


def decisions(policy: ConcurrencyPolicy, outcome: str) -> float:
    return metrics.concurrency_decisions.labels(policy.name, outcome)._value.get()


def problem(reply: Any) -> dict[str, Any]:
    assert reply["Content-Type"] == "application/problem+json", reply.content[:200]
    return json.loads(reply.content)  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _clean_slots(db: None) -> Iterator[None]:
    yield
    for policy in ConcurrencyPolicy.objects.all():
        call_command("concurrency", "reset", policy.name, stdout=io.StringIO())


# --- the middleware ---------------------------------------------------------------------------


def test_a_full_limit_refuses_at_once_with_a_503_problem(anon_client: APIClient) -> None:
    policy = make_policy(max_in_flight=2)
    hold(policy, 2)
    before = {outcome: decisions(policy, outcome) for outcome in ("refused", "refused_after_wait")}
    reply = anon_client.get(SEARCH)
    assert reply.status_code == 503
    body = problem(reply)
    assert body["type"] == CONCURRENCY_LIMIT
    assert body["policy"] == "search-slots"
    assert reply["Retry-After"] == "1"
    # max_wait_ms 0: refused without waiting, which a request that waited would say and be counted as.
    assert body["detail"] == "Every slot of search-slots is taken; retry in 1 s."
    assert decisions(policy, "refused") == before["refused"] + 1
    assert decisions(policy, "refused_after_wait") == before["refused_after_wait"]
    assert in_flight(policy) == 2  # the refused request took nothing


def test_an_admitted_request_gives_its_slot_back_on_the_way_out(anon_client: APIClient) -> None:
    policy = make_policy(max_in_flight=1)
    for _ in range(3):  # one slot serves one request after another
        assert anon_client.get(SEARCH).status_code == 200
    assert in_flight(policy) == 0
    assert decisions(policy, "admitted") >= 3


def test_a_code_block_gives_its_slot_back_when_it_raises(db: None) -> None:
    policy = make_policy(name="search-db", match_type="code", pattern="search-db", max_in_flight=1)
    seen: list[int] = []

    @bulkhead("search-db")
    def failing() -> None:
        seen.append(in_flight(policy))
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        failing()
    assert seen == [1]  # it ran holding the slot
    assert in_flight(policy) == 0
    # and the slot is usable again: one holder, then a refusal
    with bulkhead("search-db"), pytest.raises(ConcurrencyLimited), bulkhead("search-db"):
        pass
    assert in_flight(policy) == 0


def test_a_request_a_limit_or_breaker_refuses_takes_no_slot(anon_client: APIClient) -> None:
    policy = make_policy(max_in_flight=1, max_wait_ms=5000)
    shut = RateLimitPolicy(name="search-shut", pattern="/api/books/search", limit=0, period=60)
    shut.full_clean()
    shut.save()
    get_runtime().invalidate()
    began = time.perf_counter()
    assert anon_client.get(SEARCH).status_code == 429
    shut.delete()
    breaker = CircuitBreakerPolicy(name="search-cb", match_type="prefix", pattern="/api/books/search")
    breaker.full_clean()
    breaker.save()
    services.breaker_force(names=["search-cb"], state=State.FORCED_OPEN)
    get_runtime().invalidate()
    hold(policy, 1)  # a full limit would make a request that asked for a slot wait 5 s
    reply = anon_client.get(SEARCH)
    assert reply.status_code == 503
    assert reply.json()["breaker"] == "search-cb"
    assert time.perf_counter() - began < 4
    assert store().status(base(policy)) == (1, 0)  # neither took a slot or a place in the queue
    services.breaker_force(names=["search-cb"], state=None)


def test_a_guard_naming_a_request_policy_does_not_take_a_second_slot(anon_client: APIClient) -> None:
    policy = make_policy(name="search", match_type="tag", pattern="search", max_in_flight=1)
    # Book search runs inside the "search" breaker guard; a bulkhead guard of the same name inside
    # the view would find the request's own slot taken.
    with bulkhead("search"):
        assert in_flight(policy) == 0
    assert anon_client.get(SEARCH).status_code == 200


def test_without_redis_the_slots_are_counted_in_process(settings: Any) -> None:
    settings.REDIS_URL = ""
    reset_runtime()
    try:
        make_policy(name="search-db", match_type="code", pattern="search-db", max_in_flight=2)
        runtime = get_runtime()
        assert runtime.concurrency_shared is None
        with bulkhead("search-db"), bulkhead("search-db"), pytest.raises(ConcurrencyLimited), bulkhead("search-db"):
            pass
        with bulkhead("search-db"), bulkhead("search-db"):  # the whole limit: one process is the fleet
            pass
    finally:
        reset_runtime()


def test_a_waiting_request_is_admitted_when_a_slot_frees_within_its_wait(anon_client: APIClient) -> None:
    policy = make_policy(max_in_flight=1, max_wait_ms=3000)
    (lease,) = hold(policy, 1)
    freed = threading.Timer(0.3, lambda: store().release(base(policy), lease))
    freed.start()
    began = time.perf_counter()
    reply = anon_client.get(SEARCH)
    waited = time.perf_counter() - began
    freed.join()
    assert reply.status_code == 200, reply.content[:200]
    assert waited >= 0.25  # it waited for the slot rather than being refused
    assert in_flight(policy) == 0
    assert decisions(policy, "admitted_after_wait") >= 1


def test_a_request_still_waiting_at_its_deadline_is_refused_and_leaves_no_place_in_the_queue(
    anon_client: APIClient,
) -> None:
    policy = make_policy(max_in_flight=1, max_wait_ms=200)
    hold(policy, 1)
    began = time.perf_counter()
    reply = anon_client.get(SEARCH)
    assert reply.status_code == 503
    assert time.perf_counter() - began >= 0.2
    assert "stayed taken for" in problem(reply)["detail"]
    assert store().status(base(policy)) == (1, 0)  # its ticket is gone: no one queues behind a ghost


def test_a_dry_run_counts_what_it_would_refuse_and_refuses_nothing(anon_client: APIClient) -> None:
    policy = make_policy(max_in_flight=1, mode="dry_run", max_wait_ms=5000)
    hold(policy, 1)
    before = decisions(policy, "dry_run_would_refuse")
    began = time.perf_counter()
    reply = anon_client.get(SEARCH)
    assert reply.status_code == 200
    assert time.perf_counter() - began < 2.0  # nor does it wait
    assert decisions(policy, "dry_run_would_refuse") == before + 1
    assert in_flight(policy) == 1  # its own counted slot is back


def test_slots_are_counted_per_client_with_an_ip_key(anon_client: APIClient) -> None:
    policy = make_policy(max_in_flight=1, key="ip")
    hold(policy, 1, value="127.0.0.1")
    assert anon_client.get(SEARCH, REMOTE_ADDR="127.0.0.1").status_code == 503
    assert anon_client.get(SEARCH, REMOTE_ADDR="127.0.0.2").status_code == 200
    out = io.StringIO()
    call_command("concurrency", "status", "search-slots", stdout=out)
    assert re.search(r"127\.0\.0\.1 +in flight 1, waiting 0", out.getvalue()), out.getvalue()


@pytest.fixture
def private_redis(redis_server: RedisServer, settings: Any) -> Iterator[RedisServer]:
    """Point this process at a Redis of its own, whose command counts no other test run adds to."""
    settings.REDIS_URL = redis_server.url
    settings.CACHES = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_server.url}}
    reset_runtime()
    yield redis_server
    reset_runtime()


def evalsha_calls() -> int:
    stats = store().client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_the_first_try_for_a_slot_rides_on_the_rate_limit_round_trip(
    private_redis: RedisServer, anon_client: APIClient
) -> None:
    policy = make_policy(max_in_flight=4)
    limit = RateLimitPolicy(name="search-ip", pattern="/api/books/search", limit=1000, period=60)
    limit.full_clean()
    limit.save()
    get_runtime().invalidate()
    assert anon_client.get(SEARCH).status_code == 200  # loads the policies and the scripts
    before = evalsha_calls()
    reply = anon_client.get(SEARCH)
    assert reply.status_code == 200
    assert "RateLimit" in reply
    # One script decides the limit and takes the slot, one gives the slot back: no third round trip.
    assert evalsha_calls() - before == 2
    assert in_flight(policy) == 0


def test_the_in_flight_gauge_counts_held_slots(db: None) -> None:
    make_policy(name="gauge", match_type="code", pattern="gauge", max_in_flight=3)
    gauge = metrics.concurrency_in_flight.labels("gauge")
    start = gauge._value.get()
    with bulkhead("gauge"), bulkhead("gauge"):
        assert gauge._value.get() == start + 2
    assert gauge._value.get() == start


# --- the lease store --------------------------------------------------------------------------


def test_slots_go_to_waiters_in_arrival_order(db: None) -> None:
    policy = make_policy(max_in_flight=1)
    key = base(policy)
    (first,) = hold(policy, 1)
    early, late = "early", "late"
    assert store().acquire(key, early, 1, 30, 5000).ahead == 0
    assert store().acquire(key, late, 1, 30, 5000).ahead == 1
    store().release(key, first)
    assert not store().acquire(key, late, 1, 30, 5000).acquired  # the earlier waiter is ahead
    assert store().acquire(key, early, 1, 30, 5000).acquired
    store().release(key, early)
    assert store().acquire(key, late, 1, 30, 5000).acquired
    assert store().status(key) == (1, 0)


def test_a_call_that_outlives_its_lease_is_counted_for_staff(db: None) -> None:
    policy = make_policy(name="search-db", match_type="code", pattern="search-db", max_in_flight=1)
    before = decisions(policy, "lease_expired")
    with bulkhead("search-db"):
        # Its lease runs out meanwhile (here: an operator gives back every slot).
        call_command("concurrency", "reset", "search-db", stdout=io.StringIO())
    assert decisions(policy, "lease_expired") == before + 1


def test_a_lease_nobody_gives_back_expires_after_lease_seconds(db: None) -> None:
    policy = make_policy(max_in_flight=1, lease_seconds=1)
    hold(policy, 1)  # a worker that will never release it
    taken_at = time.monotonic()
    assert not store().acquire(base(policy), "next", 1, 1, 0).acquired
    while not store().acquire(base(policy), "next", 1, 1, 0).acquired:
        assert time.monotonic() - taken_at < 3, "the lease never expired"
        time.sleep(0.02)
    assert 0.9 <= time.monotonic() - taken_at < 3


# --- Redis unreachable ------------------------------------------------------------------------


@pytest.fixture
def dead_redis(db: None) -> Iterator[Runtime]:
    """This process's runtime with its slot store on a port where nothing listens."""
    reset_runtime()
    runtime = get_runtime()
    client = redis.Redis(host=HOST, port=free_port(), socket_timeout=0.25, socket_connect_timeout=0.25)
    runtime.concurrency_shared = RedisConcurrencyStore(client)
    yield runtime
    client.close()
    reset_runtime()


def test_allow_keeps_each_worker_to_its_share_of_the_slots_while_redis_is_down(dead_redis: Runtime) -> None:
    make_policy(name="search-db", match_type="code", pattern="search-db", max_in_flight=8)
    dead_redis.snapshot()  # its first report to the dashboard counts the fleet: only this process
    dead_redis.fleet_workers = 4  # the fleet's live workers: this one holds 8 / 4 = 2
    with bulkhead("search-db"), bulkhead("search-db"), pytest.raises(ConcurrencyLimited), bulkhead("search-db"):
        pass
    with bulkhead("search-db"), bulkhead("search-db"):  # both given back
        pass


def test_while_redis_is_down_a_waiting_call_gets_the_slot_another_gives_back(dead_redis: Runtime) -> None:
    make_policy(name="search-db", match_type="code", pattern="search-db", max_in_flight=8, max_wait_ms=3000)
    dead_redis.snapshot()
    dead_redis.fleet_workers = 8  # one slot in this process
    holding, done = threading.Event(), threading.Event()

    def other() -> None:
        with bulkhead("search-db"):
            holding.set()
            done.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    assert holding.wait(5)
    threading.Timer(0.3, done.set).start()
    began = time.perf_counter()
    with bulkhead("search-db"):
        waited = time.perf_counter() - began
    thread.join()
    assert 0.25 <= waited < 3


def test_deny_answers_503_while_redis_is_down(dead_redis: Runtime, anon_client: APIClient) -> None:
    make_policy(max_in_flight=8, on_store_failure="deny")
    reply = anon_client.get(SEARCH)
    assert reply.status_code == 503
    assert "unreachable" in problem(reply)["detail"]
    assert reply["Retry-After"] == "1"


# --- staff: admin, command, defaults ----------------------------------------------------------

CHANGELIST = "/admin/resilience/concurrencypolicy/"


@pytest.fixture
def admin_client(db: None) -> Client:
    superuser = User.objects.create_superuser(username="root", email="root@example.com", password="x-horse-battery")
    client = Client()
    client.force_login(superuser)
    return client


def form(**fields: str) -> dict[str, str]:
    data = {
        "name": "search-slots",
        "enabled": "on",
        "mode": "enforce",
        "methods": "",
        "match_type": "tag",
        "pattern": "search",
        "key": "global",
        "header_name": "",
        "max_in_flight": "8",
        "max_wait_ms": "0",
        "lease_seconds": "30",
        "on_store_failure": "allow",
        "adaptive_floor": "",  # a fixed limit, as the form comes
        "adaptive_target_ms": "1000",
    }
    data.update(fields)
    return data


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_in_flight", "0"),
        ("max_in_flight", "10001"),
        ("max_wait_ms", "10001"),
        ("max_wait_ms", "-1"),
        ("lease_seconds", "0"),
        ("lease_seconds", "3601"),
        ("max_in_flight", "99999999999999999999"),
        ("adaptive_floor", "0"),
        ("adaptive_floor", "9"),  # above max_in_flight (8)
        ("adaptive_target_ms", "0"),
        ("adaptive_target_ms", "60001"),
    ],
)
def test_the_admin_refuses_numbers_out_of_bounds_with_a_form_error(
    admin_client: Client, field: str, value: str
) -> None:
    reply = admin_client.post(CHANGELIST + "add/", form(**{field: value}))
    assert reply.status_code == 200  # the form again, not a 500 and not a save
    assert field in reply.context["adminform"].form.errors
    assert not ConcurrencyPolicy.objects.exists()


def test_the_admin_refuses_a_code_bulkhead_keyed_by_client(admin_client: Client) -> None:
    reply = admin_client.post(CHANGELIST + "add/", form(match_type="code", pattern="x", key="ip"))
    assert reply.status_code == 200
    assert "key" in reply.context["adminform"].form.errors


def test_a_save_in_the_admin_is_in_force_at_once(
    admin_client: Client, anon_client: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    version = PolicyVersion.current()
    assert anon_client.get(SEARCH).status_code == 200  # the worker has loaded the policies before the save
    with django_capture_on_commit_callbacks(execute=True):  # the commit tells the workers
        reply = admin_client.post(CHANGELIST + "add/", form(max_in_flight="1"))
    assert reply.status_code == 302, reply.content[:500]
    assert PolicyVersion.current() == version + 1
    policy = ConcurrencyPolicy.objects.get(name="search-slots")
    hold(policy, 1)
    assert anon_client.get(SEARCH).status_code == 503
    listing = admin_client.get(CHANGELIST)
    assert listing.status_code == 200
    assert re.search(rb">1</td>", listing.content)  # the live "in flight now" column


def test_shop_staff_edit_concurrency_policies_in_the_admin(make_user: Any) -> None:
    from django.apps import apps
    from django.db import connection

    # The group as the migrations make it (a transactional test before this one flushed it).
    with connection.schema_editor() as editor:
        importlib.import_module("accounts.migrations.0003_shop_staff_group").create_group(apps, editor)
        importlib.import_module("accounts.migrations.0005_shop_staff_concurrency").grant(apps, editor)
    member = make_user(role=User.Role.STAFF, password="x-horse-battery")
    client = Client()
    assert client.login(username=member.username, password="x-horse-battery")
    assert client.get(CHANGELIST).status_code == 200
    reply = client.post(CHANGELIST + "add/", form())
    assert reply.status_code == 302, reply.content[:300]
    assert ConcurrencyPolicy.objects.filter(name="search-slots").exists()


def test_the_dashboard_shows_the_slots_held_now(admin_client: Client) -> None:
    policy = make_policy(max_in_flight=4, max_wait_ms=200)
    hold(policy, 3)
    data = admin_client.get("/admin/resilience/dashboard/data.json").json()
    (row,) = data["concurrency"]
    assert (row["name"], row["in_flight"], row["max_in_flight"], row["waiting"]) == ("search-slots", 3, 4, 0)
    assert row["change_url"] == f"{CHANGELIST}{policy.pk}/change/"
    assert b'id="rs-concurrency"' in admin_client.get("/admin/resilience/dashboard/").content


def test_the_command_shows_held_slots_and_gives_them_back(db: None) -> None:
    policy = make_policy(max_in_flight=4)
    hold(policy, 3)
    out = io.StringIO()
    call_command("concurrency", "status", stdout=out)
    assert "search-slots" in out.getvalue()
    assert "in flight 3 of 4" in out.getvalue()
    call_command("concurrency", "reset", "search-slots", stdout=io.StringIO())
    assert in_flight(policy) == 0


@pytest.mark.default_policies
def test_search_has_a_default_bulkhead_of_twice_the_pool(db: None) -> None:
    from django.conf import settings

    policy = ConcurrencyPolicy.objects.get(name="search")
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool", {}).get("max_size", 8)
    assert policy.max_in_flight == 2 * pool
    assert (policy.match_type, policy.pattern, policy.key) == ("tag", "search", "global")
    assert compile_concurrency(policy).matcher.matches("GET", "/api/books/search", lambda: ("x", frozenset({"search"})))
