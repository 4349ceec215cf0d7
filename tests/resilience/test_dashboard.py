"""The staff resilience dashboard: who may see it, and that its numbers are the requests actually decided."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.db import ConnectionHandler
from django.test import Client
from django.utils import timezone
from pytest_django.fixtures import Settings

from accounts.models import User
from resilience import services
from resilience.engine.breaker import State
from resilience.models import PolicyVersion, RateLimitPolicy
from resilience.ops import dashboard
from resilience.runtime import POLICY_BACKSTOP_SECONDS, get_runtime, key_prefix, reset_runtime, workers_key
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.conftest import make_breaker, make_policy

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/resilience/dashboard/"
DATA = "/admin/resilience/dashboard/data.json"
LOGIN = "/admin/login/"
POLICIES = "/admin/resilience/ratelimitpolicy/"

# The traffic the counting tests send: N allowed and M limited by an enforcing policy of limit N,
# and L allowed then K "would limit" by a dry-run policy of limit L.
N, M = 3, 2
L, K = 2, 4


def web_client(user: User) -> Client:
    """Return a browser-like client signed in to the admin (session cookie)."""
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(db: None) -> User:
    return User.objects.create_superuser(username="root", email="root@example.com", password="correct-horse-battery")


@pytest.fixture
def staff_web(staff: User) -> Client:
    return web_client(staff)


@pytest.fixture
def in_process_runtime(settings: Settings) -> Iterator[None]:
    """Run the resilience layer without Redis (the embedded default), then restore the Redis runtime."""
    settings.REDIS_URL = ""
    reset_runtime()
    yield
    reset_runtime()


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.redis), "process", pytest.param("cluster", marks=pytest.mark.redis)]
)
def store(request: pytest.FixtureRequest) -> str:
    """Run the test against the Redis store, the in-process store and a Redis Cluster."""
    if request.param == "process":
        request.getfixturevalue("in_process_runtime")
    else:
        if request.param == "cluster":
            request.getfixturevalue("runtime_on_cluster")
        # Earlier tests of this run counted into the same minutes; policy ids may come round again.
        client = get_runtime().shared.client  # type: ignore[attr-defined]  # the Redis store here
        for pattern in ("stats:*", "top:*"):
            for key in client.scan_iter(match=f"{key_prefix()}{pattern}"):
                client.delete(key)
    return request.param


class _Links(HTMLParser):
    """Collect every src and href attribute value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in ("src", "href")]


def asset_urls(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


def policy_row(data: dict[str, Any], name: str) -> dict[str, Any]:
    (row,) = [p for p in data["policies"] if p["name"] == name]
    return row


def assert_series(row: dict[str, Any], outcome: str, total: int, span: int) -> None:
    """Assert the per-minute series holds exactly `total` decisions, in its last minute or two."""
    series = row["series"][outcome]
    assert len(series) == span
    assert sum(series) == total
    # The requests took well under a minute, so only a minute boundary can split them.
    assert sum(series[-2:]) == total


def send_counted_traffic(client: Client) -> tuple[RateLimitPolicy, RateLimitPolicy]:
    """Send N + M requests under an enforcing limit of N and L + K under a dry-run limit of L."""
    enforced = make_policy(name="dash-books", pattern="/api/books", key="ip", limit=N, period=60)
    dry_run = make_policy(name="dash-orders", pattern="/api/orders", key="ip", limit=L, period=60, mode="dry_run")
    statuses = [client.get("/api/books").status_code for _ in range(N + M)]
    assert statuses == [200] * N + [429] * M
    # Anonymous order lists are refused by the view (401); the dry-run policy counts them all first.
    statuses = [client.get("/api/orders").status_code for _ in range(L + K)]
    assert statuses == [401] * (L + K)
    return enforced, dry_run


# --- who may look --------------------------------------------------------------------------------


def test_dashboard_page_renders_for_staff_with_same_origin_assets_only(staff_web: Client) -> None:
    response = staff_web.get(DASHBOARD)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="rs-dashboard"' in html
    assert f'data-url="{DATA}"' in html
    assert 'id="rs-initial"' in html  # the first render needs no second request
    urls = asset_urls(html)
    assert urls, "the admin page links its stylesheets and pages"
    external = [url for url in urls if urlsplit(url).scheme not in ("", "http", "https") or urlsplit(url).netloc]
    assert external == [], "every src/href must be relative or same-origin"


def test_dashboard_json_is_served_to_staff_uncached(staff_web: Client) -> None:
    response = staff_web.get(DATA)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    data = response.json()
    assert set(data) >= {"policies", "top_keys", "breakers", "health", "propagation", "minutes", "source"}


@pytest.mark.parametrize("who", ["customer", "anonymous"])
@pytest.mark.parametrize("url", [DASHBOARD, DATA])
def test_dashboard_sends_non_staff_to_the_admin_login(who: str, url: str, customer: User) -> None:
    client = web_client(customer) if who == "customer" else Client()

    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith(f"{LOGIN}?next=")
    assert b"rs-dashboard" not in response.content
    assert b"policies" not in response.content


def test_dashboard_refuses_admin_flagged_users_who_are_not_shop_staff(make_user: Callable[..., User]) -> None:
    user = make_user()
    User.objects.filter(pk=user.pk).update(is_staff=True)  # may enter the admin, yet is a customer
    client = web_client(user)

    for url in (DASHBOARD, DATA):
        response = client.get(url)
        assert response.status_code == 403
        assert response["Content-Type"] == "application/problem+json"


# --- what it counts ------------------------------------------------------------------------------


def test_dashboard_counts_every_decision_per_policy_and_minute(store: str, staff_web: Client) -> None:
    client = Client()  # an API client from 127.0.0.1
    enforced, dry_run = send_counted_traffic(client)

    data = staff_web.get(DATA).json()

    assert data["source"] == ("process" if store == "process" else "shared")
    span = len(data["minutes"])
    assert span == 15
    books = policy_row(data, "dash-books")
    assert books["totals"] == {"allowed": N, "limited": M, "dry_run_would_limit": 0}
    assert_series(books, "allowed", N, span)
    assert_series(books, "limited", M, span)
    assert books["rate"] == f"{N}/60s"
    assert books["change_url"] == f"{POLICIES}{enforced.pk}/change/"
    assert books["svg"].startswith("<svg")
    orders = policy_row(data, "dash-orders")
    assert orders["totals"] == {"allowed": L, "limited": 0, "dry_run_would_limit": K}
    assert_series(orders, "dry_run_would_limit", K, span)
    assert orders["change_url"] == f"{POLICIES}{dry_run.pk}/change/"
    # Only enforced refusals make a key "limited"; dry-run ones are counted, not listed.
    assert data["top_keys"] == [{"policy": "dash-books", "key": "127.0.0.1", "count": M}]


def test_dashboard_shows_a_token_buckets_burst_as_clients_see_it(staff_web: Client) -> None:
    make_policy(
        name="dash-bucket", pattern="/api/books", key="ip", algorithm="token_bucket", limit=100, period=60, burst=20
    )
    make_policy(name="dash-window", pattern="/api/orders", key="ip", limit=10, period=60)
    stated = Client().get("/api/books")["RateLimit-Policy"]

    data = staff_web.get(DATA).json()

    bucket, window = policy_row(data, "dash-bucket"), policy_row(data, "dash-window")
    assert stated == '"dash-bucket";q=20;w=12'
    assert (bucket["burst"], bucket["refill_seconds"]) == (20, 12)
    assert bucket["burst_summary"] == "burst 20, refills in 12 s"
    assert (window["burst"], window["refill_seconds"], window["burst_summary"]) == (None, None, "")


def test_hot_keys_of_a_deleted_policy_never_crowd_out_a_live_one(store: str, staff_web: Client) -> None:
    busy = make_policy(name="dash-busy", pattern="/api/books", key="ip", limit=1, period=60)
    crawlers = [f"198.51.100.{i}" for i in range(1, 31)]
    for ip in crawlers:  # thirty keys, each refused twice, in this very minute
        statuses = [Client(REMOTE_ADDR=ip).get("/api/books").status_code for _ in range(3)]
        assert statuses == [200, 429, 429]
    busy.delete()
    get_runtime().invalidate()
    quiet = make_policy(name="dash-quiet", pattern="/api/orders", key="ip", limit=1, period=60)
    statuses = [Client(REMOTE_ADDR="203.0.113.7").get("/api/orders").status_code for _ in range(2)]
    assert statuses == [401, 429]

    data = staff_web.get(DATA).json()

    assert data["top_keys"] == [{"policy": quiet.name, "key": "203.0.113.7", "count": 1}]


def test_hot_keys_rank_every_live_policy_by_refusals(store: str, staff_web: Client) -> None:
    make_policy(name="dash-many", pattern="/api/books", key="ip", limit=1, period=60)
    make_policy(name="dash-one", pattern="/api/orders", key="ip", limit=1, period=60)
    for i in range(1, 26):  # 25 keys refused once each: more than any one page lists
        assert Client(REMOTE_ADDR=f"198.51.100.{i}").get("/api/books").status_code == 200
        assert Client(REMOTE_ADDR=f"198.51.100.{i}").get("/api/books").status_code == 429
    heavy = Client(REMOTE_ADDR="192.0.2.9")
    assert [heavy.get("/api/orders").status_code for _ in range(5)] == [401, 429, 429, 429, 429]

    top = staff_web.get(DATA).json()["top_keys"]

    assert len(top) == 10
    assert top[0] == {"policy": "dash-one", "key": "192.0.2.9", "count": 4}
    assert {row["policy"] for row in top[1:]} == {"dash-many"}
    assert {row["count"] for row in top[1:]} == {1}


@pytest.mark.redis
def test_dashboard_counters_expire_within_twenty_minutes() -> None:
    send_counted_traffic(Client())

    client = get_runtime().shared.client  # type: ignore[attr-defined]  # the Redis store here
    counts = list(client.scan_iter(match=f"{key_prefix()}stats:*"))
    limited = list(client.scan_iter(match=f"{key_prefix()}top:*"))

    assert counts
    assert limited
    ttls = {key: client.ttl(key) for key in counts + limited}
    assert all(0 < ttl <= 1200 for ttl in ttls.values()), ttls


@pytest.mark.redis
def test_dashboard_lists_breakers_with_state_and_change_link(staff_web: Client) -> None:
    quiet = make_breaker(name="dash-quiet", match_type="code", pattern="dash-quiet")
    tripped = make_breaker(name="dash-tripped", match_type="code", pattern="dash-tripped")
    services.breaker_force(names=["dash-tripped"], state=State.FORCED_OPEN)

    data = staff_web.get(DATA).json()

    rows = {row["name"]: row for row in data["breakers"]}
    assert data["breaker_error"] == ""
    assert rows["dash-quiet"]["state"] == "closed"
    assert rows["dash-quiet"]["change_url"] == f"/admin/resilience/circuitbreakerpolicy/{quiet.pk}/change/"
    assert rows["dash-tripped"]["state"] == "open"
    assert rows["dash-tripped"]["forced"] is True
    assert rows["dash-tripped"]["change_url"] == f"/admin/resilience/circuitbreakerpolicy/{tripped.pk}/change/"


@pytest.mark.redis
def test_dashboard_reports_the_database_and_redis_up(staff_web: Client) -> None:
    health = staff_web.get(DATA).json()["health"]

    assert health["database"]["engine"] == "PostgreSQL"
    assert health["database"]["ok"] is True
    assert health["redis"]["ok"] is True
    assert health["redis"]["ms"] >= 0


def test_health_names_the_database_engine_in_use() -> None:
    """The card names the engine that answered: an app run without DATABASE_URL is on SQLite."""
    sqlite = ConnectionHandler({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})["default"]
    try:
        health = dashboard._health(sqlite)
    finally:
        sqlite.close()

    assert health["database"]["engine"] == "SQLite"
    assert health["database"]["ok"] is True


def test_dashboard_page_titles_the_health_card_with_the_engine(staff_web: Client) -> None:
    html = staff_web.get(DASHBOARD).content.decode()

    assert '<h3 id="rs-health-database-engine">PostgreSQL</h3>' in html


# --- policy propagation: which workers serve requests under the current policies -------------------


def me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reports() -> dict[str, dict[str, Any]]:
    """Return what each worker reported in Redis, as the dashboard reads it."""
    client = get_runtime().shared.client  # type: ignore[attr-defined]  # the Redis store here
    return {w.decode(): json.loads(raw) for w, raw in client.hgetall(workers_key()).items()}


def report(worker: str, version: int | None, at: float, loaded_at: float | None = None) -> None:
    """Write a worker's report as Runtime.heartbeat writes it (another worker, at a chosen time)."""
    client = get_runtime().shared.client  # type: ignore[attr-defined]  # the Redis store here
    record = {"version": version, "loaded_at": loaded_at, "at": at}
    client.hset(workers_key(), worker, json.dumps(record))


def policies_saved_elsewhere() -> int:
    """Commit-like change on another instance: PostgreSQL's count moves, then Redis's counter is bumped."""
    PolicyVersion.bump()
    RedisLimiterStore(
        get_runtime().shared.client,  # type: ignore[attr-defined]  # the Redis store here
        get_runtime().shared.version_key,  # type: ignore[attr-defined]  # the Redis store here
    ).bump_version()
    return PolicyVersion.current()


@pytest.fixture
def no_reports() -> None:
    get_runtime().shared.client.delete(workers_key())  # type: ignore[attr-defined]  # the Redis store here


@pytest.mark.redis
@pytest.mark.parametrize("learnt", ["admission", "saved here"])
def test_a_worker_reports_a_change_with_the_request_that_loads_it(learnt: str, no_reports: None) -> None:
    """Not a heartbeat interval later, and never the version it held before the check."""
    make_policy(name="dash-seen", pattern="/api/books", key="ip", limit=100, period=60)
    assert Client().get("/api/books").status_code == 200  # loads the policies
    loaded = reports()[me()]
    assert loaded["version"] == PolicyVersion.current()

    if learnt == "admission":
        # Saved on another instance: this worker learns it from its next admission round trip.
        version = policies_saved_elsewhere()
    else:
        # Saved in this process: the signal after commit makes it reload at its next request.
        PolicyVersion.bump()
        assert get_runtime().bump_version() is None
        version = PolicyVersion.current()
    assert Client().get("/api/books").status_code == 200

    mine = reports()[me()]
    assert mine["version"] == version
    assert mine["loaded_at"] >= loaded["at"]
    assert mine["at"] >= mine["loaded_at"]


@pytest.mark.redis
def test_an_idle_worker_is_no_alarm_and_one_serving_an_old_version_is(staff_web: Client, no_reports: None) -> None:
    version = policies_saved_elsewhere()
    get_runtime().invalidate()
    assert Client().get("/api/books").status_code == 200  # this worker loads it
    now = time.time()
    # Another worker loaded it 20 s ago; four others last served requests under the old version:
    report("first:1", version, at=now - 1, loaded_at=now - 20)
    report("idle:2", version - 1, at=now - 21, loaded_at=now - 600)  # before the change was in force
    report("pending:3", version - 1, at=now - 17, loaded_at=now - 600)  # within the 5 s it may take
    report("behind:4", version - 1, at=now - 2, loaded_at=now - 600)  # past them: a broken promise
    report("gone:5", version - 1, at=now - 31, loaded_at=now - 600)  # silent 30 s: no longer counted

    propagation = staff_web.get(DATA).json()["propagation"]

    states = {w["worker"]: w["state"] for w in propagation["workers"]}
    assert states == {
        me(): "confirmed",
        "first:1": "confirmed",
        "idle:2": "idle",
        "pending:3": "pending",
        "behind:4": "behind",
    }
    assert propagation["version"] == version
    assert abs(propagation["since"] - (now - 20)) < 0.01
    assert (propagation["confirmed"], propagation["idle"], propagation["pending"], propagation["behind"]) == (
        2,
        1,
        1,
        1,
    )
    assert propagation["active"] == 5
    assert propagation["backstop_seconds"] == POLICY_BACKSTOP_SECONDS


@pytest.mark.redis
def test_workers_idle_since_a_save_leave_the_dashboard_calm(staff_web: Client, no_reports: None) -> None:
    """Two workers served requests, then a save: only the one that served since has confirmed it."""
    before = PolicyVersion.current()
    report("other:7", before, at=time.time() - 3, loaded_at=time.time() - 300)
    assert Client().get("/api/books").status_code == 200
    version = policies_saved_elsewhere()
    get_runtime().invalidate()

    propagation = staff_web.get(DATA).json()["propagation"]  # this request loads the change

    states = {w["worker"]: w["state"] for w in propagation["workers"]}
    assert states == {me(): "confirmed", "other:7": "idle"}
    assert propagation["version"] == version
    assert propagation["behind"] == 0


def test_worker_states_compare_each_report_with_the_first_load() -> None:
    now, since = 10_000.0, 9_980.0

    def states(*rows: tuple[str, int | None, float, float | None], version: int = 5) -> dict[str, str]:
        found = [dashboard.WorkerReport(worker=w, version=v, loaded_at=loaded, at=at) for w, v, at, loaded in rows]
        return dashboard.worker_states(found, version, now)[1]

    assert states(
        ("a", 5, now, since),
        ("newer", 6, now, now - 1),  # loaded a change saved since the page read the version
        ("none", None, now - 21, None),  # nothing loaded (PostgreSQL down at start), quiet since
        ("idle", 4, since - 0.001, 100.0),
        ("edge", 4, since + POLICY_BACKSTOP_SECONDS, 100.0),
        ("late", 4, since + POLICY_BACKSTOP_SECONDS + 0.001, 100.0),
        ("gone", 4, now - 30.001, 100.0),
    ) == {"a": "confirmed", "newer": "confirmed", "none": "idle", "idle": "idle", "edge": "pending", "late": "behind"}
    # Until a worker has loaded it, no one can be behind it: it may have been saved a moment ago.
    assert states(("old", 4, now, 100.0)) == {"old": "pending"}
    first = dashboard.WorkerReport(worker="a", version=5, loaded_at=since, at=now)
    assert dashboard.worker_states([first], 5, now)[0] == since


@pytest.mark.redis
def test_reports_of_an_older_release_are_dropped(staff_web: Client, no_reports: None) -> None:
    client = get_runtime().shared.client  # type: ignore[attr-defined]  # the Redis store here
    client.hset(workers_key(), "old:9", f"3 {time.time():.3f}")  # "<version> <unix time>"

    propagation = staff_web.get(DATA).json()["propagation"]

    assert "old:9" not in {w["worker"] for w in propagation["workers"]}
    assert client.hget(workers_key(), "old:9") is None


def test_dashboard_without_redis_says_so(in_process_runtime: None, staff_web: Client) -> None:
    data = staff_web.get(DATA).json()

    assert get_runtime().uses_redis is False
    assert data["health"]["database"]["ok"] is True
    assert data["health"]["redis"]["ok"] is None
    assert data["propagation"]["version"] is None
    assert data["source"] == "process"


# --- the admin around it -------------------------------------------------------------------------


def change_form(policy: RateLimitPolicy, **fields: str) -> dict[str, str]:
    """Return the POST body of the policy's change form with `fields` changed (no overrides)."""
    data = {
        "name": policy.name,
        "enabled": "on",
        "mode": policy.mode,
        "priority": str(policy.priority),
        "methods": policy.methods,
        "match_type": policy.match_type,
        "pattern": policy.pattern,
        "key": policy.key,
        "header_name": policy.header_name,
        "rate": "",
        "algorithm": policy.algorithm,
        "limit": str(policy.limit),
        "period": str(policy.period),
        "burst": "",
        "on_store_failure": policy.on_store_failure,
        "overrides-TOTAL_FORMS": "0",
        "overrides-INITIAL_FORMS": "0",
        "overrides-MIN_NUM_FORMS": "0",
        "overrides-MAX_NUM_FORMS": "1000",
    }
    data.update(fields)
    return data


def seconds_of_day(moment: datetime, later: int) -> int:
    """Return the local second of the day `later` seconds after moment, rounded up."""
    at = timezone.localtime(moment)
    return math.ceil(at.hour * 3600 + at.minute * 60 + at.second + at.microsecond / 1e6 + later) % 86400


def test_admin_save_says_when_the_change_is_in_force(superuser: User) -> None:
    policy = make_policy(name="dash-save", pattern="/api/books", key="ip", limit=100, period=60)
    client = web_client(superuser)

    began = timezone.now()
    response = client.post(f"{POLICIES}{policy.pk}/change/", change_form(policy, limit="3"), follow=True)
    ended = timezone.now()

    assert response.status_code == 200
    assert response.redirect_chain == [(POLICIES, 302)]
    html = response.content.decode()
    stated = re.search(r"In force on every worker by (\d\d):(\d\d):(\d\d)", html)
    assert stated is not None
    # The stated moment is no earlier than a second after the save (a whole second, rounded up).
    hours, minutes, seconds = map(int, stated.groups())
    earliest, latest = seconds_of_day(began, 1), seconds_of_day(ended, 1)
    assert (hours * 3600 + minutes * 60 + seconds - earliest) % 86400 <= (latest - earliest) % 86400
    assert f'href="{DASHBOARD}"' in html
    policy.refresh_from_db()
    assert policy.limit == 3


@pytest.mark.parametrize(
    ("action", "before", "after"),
    [("disable", True, False), ("enable", False, True)],
)
def test_admin_enable_disable_actions_log_policy_change(
    action: str, before: bool, after: bool, superuser: User, caplog: pytest.LogCaptureFixture
) -> None:
    policy = make_policy(name="dash-action", pattern="/api/books", key="ip", limit=100, period=60, enabled=before)
    client = web_client(superuser)
    caplog.set_level(logging.INFO, logger="resilience.ops.audit")
    caplog.clear()

    response = client.post(
        POLICIES, {"action": action, "_selected_action": [str(policy.pk)], "index": "0", "select_across": "0"}
    )

    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.enabled is after
    lines = [
        r for r in caplog.records if r.name == "resilience.ops.audit" and getattr(r, "event", "") == "policy_change"
    ]
    assert len(lines) == 1
    line = lines[0]
    assert line.policy == "dash-action"  # type: ignore[attr-defined]  # a log record's extra field
    assert line.action == "updated"  # type: ignore[attr-defined]  # a log record's extra field
    assert line.changes == {"enabled": [before, after]}  # type: ignore[attr-defined]  # a log record's extra field
    assert line.user == "root"  # type: ignore[attr-defined]  # a log record's extra field
