"""Rate limits under real gunicorn: exact across workers and instances, live admin edits, Redis faults.

Every request is real HTTP on loopback. Simulated clients bind their sockets to their own
127.0.0.N source address, so per-IP policies count each one separately (DESIGN.md, "Testing many
clients on one machine"). Each test creates its policies before it starts gunicorn, except where
the change itself is under test.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import User
from catalog.models import Book
from resilience.models import RateLimitPolicy
from resilience.runtime import HEARTBEAT_INTERVAL
from tests.conftest import make_policy
from tests.live import LiveServer, RedisServer, Reply, request, with_live_password

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# Fresh loopback client addresses: 127.0.1.1, 127.0.1.2, ... never reused within a run.
_sources = (f"127.0.{n // 250 + 1}.{n % 250 + 1}" for n in itertools.count())
# The live server's promise: a policy change is in force on every worker within this long (s).
PROPAGATION_SECONDS = 1.0


def new_source() -> str:
    return next(_sources)


def book_path(book: Book) -> str:
    return f"/api/books/{book.pk}"


def exact_path(book: Book) -> str:
    """Return a regex that matches the book's detail path and nothing else."""
    return f"^/api/books/{book.pk}$"


def fire(calls: Iterable[tuple[int, str, str | None, dict[str, str]]], concurrency: int) -> list[Reply]:
    """Send (port, path, source, headers) requests, `concurrency` at a time, each on its own connection."""

    def one(call: tuple[int, str, str | None, dict[str, str]]) -> Reply:
        port, path, source, headers = call
        return request(port, path, source=source, headers=headers)

    calls = list(calls)
    with ThreadPoolExecutor(max_workers=min(concurrency, len(calls))) as pool:
        return list(pool.map(one, calls))


def burst(
    port: int,
    path: str,
    count: int,
    *,
    source: str | None = None,
    probe: str = "-",
    concurrency: int = 8,
) -> list[Reply]:
    return fire(((port, path, source, {"X-Probe": probe}) for _ in range(count)), concurrency)


def statuses(replies: Iterable[Reply]) -> Counter[int]:
    return Counter(r.status for r in replies)


def policy_quota(reply: Reply, name: str) -> int | None:
    """Return q= of the named policy in RateLimit-Policy, or None if the policy is not listed."""
    for item in (reply.header("RateLimit-Policy") or "").split(","):
        parts = [p.strip() for p in item.split(";")]
        if parts[0] == f'"{name}"':
            return int(next(p[2:] for p in parts if p.startswith("q=")))
    return None


def fixed_window_period(now: float, margin: float = 300.0) -> int:
    """Return a period near an hour whose current fixed window has at least `margin` seconds left.

    Fixed windows are aligned to multiples of the period since the epoch: a boundary inside the
    test would legitimately admit a second quota.
    """
    return next(p for p in range(3600, 7200) if p - now % p >= margin)


# --- exact across processes ------------------------------------------------------------------


def test_limits_are_exact_across_workers_and_instances(
    live_servers: Callable[..., LiveServer], make_book: Callable[..., Book]
) -> None:
    """1000 requests, 64 at a time, over 4 + 2 workers on two instances: exactly 100 get in."""
    limit, total = 100, 1000
    configs = {
        "sliding_window": {"period": 60},
        # A refill every 36 s: none can happen during the burst, so the burst is all that gets in.
        "token_bucket": {"period": 3600, "burst": limit},
        "fixed_window": {"period": fixed_window_period(time.time())},
    }
    books = {}
    for algorithm, extra in configs.items():
        books[algorithm] = book = make_book()
        make_policy(
            name=f"live-exact-{algorithm.replace('_', '-')}",
            match_type="regex",
            pattern=exact_path(book),
            key="ip",
            algorithm=algorithm,
            limit=limit,
            **extra,
        )
    first = live_servers(workers=4)
    second = live_servers(workers=2)
    ports = [first.port, second.port]

    for algorithm, book in books.items():
        replies = fire(((ports[i % 2], book_path(book), None, {}) for i in range(total)), concurrency=64)

        assert statuses(replies) == {200: limit, 429: total - limit}, algorithm
        # Both instances admitted some: the count is shared, not per instance.
        assert {r.port for r in replies if r.status == 200} == set(ports), algorithm
        refused = next(r for r in replies if r.status == 429)
        assert refused.header("Content-Type") == "application/problem+json"
        assert int(refused.header("Retry-After") or 0) >= 1
        assert json.loads(refused.body)["violated-policies"] == [f"live-exact-{algorithm.replace('_', '-')}"]


# --- live admin edits ------------------------------------------------------------------------


class _FormFields(HTMLParser):
    """Collect the submittable fields of one HTML form, as a browser would send them."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.fields: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or "name" not in a and tag != "option":
            return
        if tag == "input":
            kind = a.get("type", "text")
            if kind in ("submit", "button", "image", "file"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.fields[a["name"]] = a.get("value", "on" if kind == "checkbox" else "")
        elif tag == "select":
            self._select = a["name"]
            self.fields.setdefault(a["name"], "")
        elif tag == "option" and self._select is not None and "selected" in a:
            self.fields[self._select] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = a["name"]
            self.fields[a["name"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self.fields[self._textarea] += data


def form_fields(html: str, form_id: str) -> dict[str, str]:
    parser = _FormFields(form_id)
    parser.feed(html)
    return parser.fields


class Admin:
    """A staff member in a browser: a session, the CSRF token, and the admin's real forms."""

    def __init__(self, server: LiveServer, username: str, password: str) -> None:
        self.base = server.url
        self.session = requests.Session()
        page = self.session.get(f"{self.base}/admin/login/", timeout=10)
        fields = form_fields(page.text, "login-form")
        fields.update(username=username, password=password, next="/admin/")
        reply = self.session.post(f"{self.base}/admin/login/", data=fields, allow_redirects=False, timeout=10)
        assert reply.status_code == 302, reply.text[:500]
        assert "sessionid" in self.session.cookies

    def _url(self, policy: RateLimitPolicy, action: str = "") -> str:
        return f"{self.base}/admin/resilience/ratelimitpolicy/{policy.pk}/{action}"

    def change(self, policy: RateLimitPolicy, **changes: str | None) -> float:
        """Submit the change form with `changes` (None unticks a checkbox); return when it answered."""
        page = self.session.get(self._url(policy, "change/"), timeout=10)
        assert page.status_code == 200
        fields = form_fields(page.text, "ratelimitpolicy_form")
        assert fields["limit"] == str(policy.limit)  # the form we parsed is the policy's
        for name, value in changes.items():
            if value is None:
                fields.pop(name, None)
            else:
                fields[name] = value
        fields["_save"] = "Save"
        reply = self.session.post(self._url(policy, "change/"), data=fields, allow_redirects=False, timeout=10)
        answered = time.monotonic()
        assert reply.status_code == 302, form_errors(reply.text)
        return answered

    def action(self, policy: RateLimitPolicy, action: str) -> float:
        """Run a changelist action on the policy; return when it answered."""
        url = f"{self.base}/admin/resilience/ratelimitpolicy/"
        page = self.session.get(url, timeout=10)
        fields = {
            "csrfmiddlewaretoken": form_fields(page.text, "changelist-form")["csrfmiddlewaretoken"],
            "action": action,
            "_selected_action": str(policy.pk),
            "index": "0",
            "select_across": "0",
        }
        reply = self.session.post(url, data=fields, allow_redirects=False, timeout=10)
        answered = time.monotonic()
        assert reply.status_code == 302, form_errors(reply.text)
        return answered

    def delete(self, policy: RateLimitPolicy) -> float:
        """Delete the policy through the confirmation page; return when it answered."""
        page = self.session.get(self._url(policy, "delete/"), timeout=10)
        assert page.status_code == 200
        token = self.session.cookies["csrftoken"]
        reply = self.session.post(
            self._url(policy, "delete/"),
            data={"csrfmiddlewaretoken": token, "post": "yes"},
            allow_redirects=False,
            timeout=10,
        )
        answered = time.monotonic()
        assert reply.status_code == 302, reply.text[:500]
        return answered


def form_errors(html: str) -> str:
    start = html.find("errornote")
    return html[start : start + 1500] if start >= 0 else html[:500]


def after_propagation(
    server: LiveServer, path: str, since: float, *, probe: str, per_burst: int = 12, max_bursts: int = 12
) -> list[list[Reply]]:
    """Keep traffic flowing until PROPAGATION_SECONDS after `since`, then sample every worker.

    During the propagation window each request comes from a new address (so the stale decisions
    a worker may make before it learns of the change count against nobody we check), and replies
    must not be errors. Afterwards, bursts from one new address each go out until every worker
    has served at least one of them; those bursts are returned for the caller to check.
    """
    deadline = since + PROPAGATION_SECONDS
    while time.monotonic() < deadline:
        replies = fire(((server.port, path, new_source(), {}) for _ in range(8)), concurrency=8)
        assert all(r.status < 500 for r in replies)
    bursts = []
    for _ in range(max_bursts):
        bursts.append(burst(server.port, path, per_burst, source=new_source(), probe=probe, concurrency=per_burst))
        if server.served_pids(probe) >= set(server.worker_pids()):
            return bursts
    pytest.fail(f"{len(server.worker_pids())} workers, only {len(server.served_pids(probe))} served {probe}")


def test_admin_changes_are_enforced_by_every_worker_within_a_second(
    live_servers: Callable[..., LiveServer], make_book: Callable[..., Book]
) -> None:
    book = make_book()
    path = book_path(book)
    with_live_password(User.objects.create_superuser(username="ops", email="ops@example.com", password=None))
    policy = make_policy(
        name="live-admin", match_type="regex", pattern=exact_path(book), key="ip", limit=1000, period=60
    )
    server = live_servers(workers=4)
    before = burst(server.port, path, 16, source=new_source(), probe="before")
    assert statuses(before) == {200: 16}
    assert {policy_quota(r, "live-admin") for r in before} == {1000}

    admin = Admin(server, "ops", "correct-horse-battery")

    # Lower the limit from 1000 to 3: every worker, within a second, shows q=3 and admits 3 per client.
    changed = admin.change(policy, limit="3")
    for replies in after_propagation(server, path, changed, probe="lowered"):
        assert {policy_quota(r, "live-admin") for r in replies} == {3}
        assert statuses(replies) == {200: 3, 429: len(replies) - 3}

    # Disable (the changelist action): no worker limits or reports the policy any more.
    disabled = admin.action(policy, "disable")
    for replies in after_propagation(server, path, disabled, probe="disabled"):
        assert statuses(replies) == {200: len(replies)}
        assert not any(r.header("RateLimit-Policy") or r.header("RateLimit") for r in replies)

    # Enable again: back in force everywhere.
    enabled = admin.action(policy, "enable")
    for replies in after_propagation(server, path, enabled, probe="enabled"):
        assert {policy_quota(r, "live-admin") for r in replies} == {3}
        assert statuses(replies) == {200: 3, 429: len(replies) - 3}

    # Delete: gone everywhere.
    deleted = admin.delete(policy)
    for replies in after_propagation(server, path, deleted, probe="deleted"):
        assert statuses(replies) == {200: len(replies)}
        assert not any(r.header("RateLimit-Policy") or r.header("RateLimit") for r in replies)
    assert not RateLimitPolicy.objects.filter(pk=policy.pk).exists()


# --- Redis faults ----------------------------------------------------------------------------

# Redis client timeouts for the fault test, and how long a worker stays off a failed Redis (s).
REDIS_TIMEOUT = 0.25
STORE_RETRY_SECONDS = 1.0
# No request may take longer than one Redis timeout plus this much (s).
MAX_LATENCY = 1.5


def sequential(port: int, path: str, count: int, source: str) -> list[Reply]:
    return [request(port, path, source=source) for _ in range(count)]


def assert_refused_closed(reply: Reply) -> None:
    assert reply.status == 503
    assert reply.header("Content-Type") == "application/problem+json"
    assert int(reply.header("Retry-After") or 0) >= 1
    assert json.loads(reply.body)["type"].endswith("#temporary-reduced-capacity")


def wait_for_redis_use(port: int, path: str, since: float) -> float:
    """Poll a fail-closed path until it is served again (Redis in use); return how long it took."""
    deadline = since + STORE_RETRY_SECONDS + 2.0
    while time.monotonic() < deadline:
        reply = request(port, path, source=new_source())
        assert reply.seconds < MAX_LATENCY
        if reply.status == 200:
            return time.monotonic() - since
        assert_refused_closed(reply)
        time.sleep(0.05)
    pytest.fail("the fail-closed path still answers 503 after Redis came back")


def test_redis_outage_fails_open_or_closed_per_policy_and_recovers(
    live_servers: Callable[..., LiveServer], redis_server: RedisServer, make_book: Callable[..., Book]
) -> None:
    limit = 5
    open_book, closed_book = make_book(), make_book()
    open_path, closed_path = book_path(open_book), book_path(closed_book)
    fail_open = make_policy(
        name="live-fail-open", match_type="regex", pattern=exact_path(open_book), key="ip",
        limit=limit, period=60, on_store_failure="allow",
    )  # fmt: skip
    make_policy(
        name="live-fail-closed", match_type="regex", pattern=exact_path(closed_book), key="ip",
        limit=1000, period=60, on_store_failure="deny",
    )  # fmt: skip
    # One worker: its in-process fallback is then the whole server, so even degraded limits are exact.
    server = live_servers(
        workers=1,
        env_overrides={
            "REDIS_URL": redis_server.url,
            "REDIS_SOCKET_TIMEOUT": str(REDIS_TIMEOUT),
            "REDIS_CONNECT_TIMEOUT": str(REDIS_TIMEOUT),
            "RESILIENCE_STORE_RETRY_SECONDS": str(STORE_RETRY_SECONDS),
        },
    )
    replies: list[Reply] = []

    def key_in_redis(source: str) -> bool:
        return bool(redis_server.keys(f"*rl:{{{fail_open.pk}.*:{source}}}"))

    # Healthy: both paths are limited in Redis.
    source = new_source()
    replies += sequential(server.port, open_path, limit + 2, source)
    assert statuses(replies) == {200: limit, 429: 2}
    assert key_in_redis(source)
    assert request(server.port, closed_path).status == 200

    for fault in ("stopped", "hung"):
        if fault == "stopped":
            redis_server.stop()  # connections refused
        else:
            redis_server.pause()  # connections hang until the client's timeouts fire
        # Degraded across more than one retry interval, so the worker tries Redis again meanwhile.
        outage_ends = time.monotonic() + STORE_RETRY_SECONDS * 1.5
        while time.monotonic() < outage_ends:
            source = new_source()
            degraded = sequential(server.port, open_path, limit + 3, source)
            assert statuses(degraded) == {200: limit, 429: 3}, fault  # per worker: exact with one
            refused = [request(server.port, closed_path, source=source) for _ in range(2)]
            for reply in refused:
                assert_refused_closed(reply)
            replies += degraded + refused

        if fault == "stopped":
            redis_server.start()  # a fresh, empty Redis on the same port
        else:
            redis_server.resume()
        back = time.monotonic()
        assert wait_for_redis_use(server.port, closed_path, back) <= STORE_RETRY_SECONDS + 1.0, fault
        source = new_source()
        recovered = sequential(server.port, open_path, limit + 2, source)
        assert statuses(recovered) == {200: limit, 429: 2}, fault
        assert key_in_redis(source), fault  # decided in Redis again, not in the fallback
        replies += recovered

    assert not [r for r in replies if r.status >= 500 and r.status != 503]
    assert max(r.seconds for r in replies) < MAX_LATENCY


def test_during_an_outage_the_fleet_admits_no_more_than_the_limit(
    live_servers: Callable[..., LiveServer], redis_server: RedisServer, make_book: Callable[..., Book]
) -> None:
    limit = 20
    book = make_book()
    make_policy(
        name="live-share", match_type="regex", pattern=exact_path(book), key="ip",
        limit=limit, period=60, on_store_failure="allow",
    )  # fmt: skip
    server = live_servers(
        workers=2,
        env_overrides={
            "REDIS_URL": redis_server.url,
            "REDIS_SOCKET_TIMEOUT": str(REDIS_TIMEOUT),
            "REDIS_CONNECT_TIMEOUT": str(REDIS_TIMEOUT),
            # Assume one worker until counted: the shares below come from the workers' reports.
            "RESILIENCE_FALLBACK_WORKERS": "1",
        },
    )
    # Each worker reports at most every HEARTBEAT_INTERVAL, counting the reports it finds: the first
    # to report at start-up found only its own. Once due again, both report and count two.
    time.sleep(HEARTBEAT_INTERVAL)
    while len(server.served_pids("report")) < 2:
        request(server.port, "/api/books", headers={"X-Probe": "report"})

    redis_server.stop()
    source = new_source()
    replies = [request(server.port, book_path(book), source=source, headers={"X-Probe": "outage"}) for _ in range(60)]

    admitted = [line[0] for line in server.access_lines() if line[4] == "outage" and line[1] == "200"]
    assert statuses(replies)[200] == len(admitted) <= limit  # not 2 x 20, as with a full limit per worker
    assert max(Counter(admitted).values()) == limit // 2  # each worker its share, exactly
    assert set(statuses(replies)) == {200, 429}


# --- metrics ---------------------------------------------------------------------------------


def decisions(server: LiveServer) -> dict[tuple[str, str], float]:
    reply = request(server.port, "/metrics")
    assert reply.status == 200
    found = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        if family.name == "bookstore_ratelimit_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[(sample.labels["policy"], sample.labels["outcome"])] = sample.value
    return found


def test_metrics_sum_decisions_across_workers(
    live_servers: Callable[..., LiveServer], make_book: Callable[..., Book]
) -> None:
    enforced_book, dry_book = make_book(), make_book()
    make_policy(
        name="live-metrics-enforce", match_type="regex", pattern=exact_path(enforced_book), key="ip",
        limit=5, period=60,
    )  # fmt: skip
    make_policy(
        name="live-metrics-dry", match_type="regex", pattern=exact_path(dry_book), key="ip",
        limit=3, period=60, mode="dry_run",
    )  # fmt: skip
    server = live_servers(workers=4)

    enforced = burst(server.port, book_path(enforced_book), 17, source=new_source(), probe="m", concurrency=8)
    dry = burst(server.port, book_path(dry_book), 11, source=new_source(), probe="m", concurrency=8)

    assert statuses(enforced) == {200: 5, 429: 12}
    assert statuses(dry) == {200: 11}  # a dry run never blocks
    assert len(server.served_pids("m")) >= 2  # so the figures below are sums over workers
    assert decisions(server) == {
        ("live-metrics-enforce", "allowed"): 5.0,
        ("live-metrics-enforce", "limited"): 12.0,
        ("live-metrics-dry", "allowed"): 3.0,
        ("live-metrics-dry", "dry_run_would_limit"): 8.0,
    }


def test_workers_refuse_a_refused_client_from_memory_until_an_operator_resets_it(
    live_servers: Callable[..., LiveServer], make_book: Callable[..., Book]
) -> None:
    from tests.resilience.test_breaker_live import evalsha_calls, manage

    book = make_book()
    make_policy(name="live-memory", match_type="regex", pattern=exact_path(book), key="ip", limit=1, period=3600)
    server = live_servers(workers=4)
    source = new_source()
    assert request(server.port, book_path(book), source=source).status == 200

    for round_ in range(3):
        # Each worker's first refusals ask Redis (the first also subscribes to resets); once it
        # knows the key is refused, it refuses on its own until Redis would admit it again.
        deadline = time.monotonic() + 20
        while True:
            before = evalsha_calls()
            replies = burst(server.port, book_path(book), 40, source=source, probe=f"memory-{round_}")
            asked = evalsha_calls() - before
            assert statuses(replies) == {429: 40}
            if asked == 0:
                break
            assert time.monotonic() < deadline, f"{asked} of 40 refusals still asked Redis"
        assert len(server.served_pids(f"memory-{round_}")) >= 2
        assert all(policy_quota(r, "live-memory") == 1 for r in replies)
        assert all(3000 < int(r.header("Retry-After") or 0) <= 3600 for r in replies)

        # An operator frees the client from a shell: whichever worker takes its next request admits it.
        manage(server, "ratelimit", "reset", "live-memory", "--key", source)
        assert request(server.port, book_path(book), source=source).status == 200
