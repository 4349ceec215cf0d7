"""What clients see from the rate limits: headers, 429s, keys, overrides, matching, degraded stores."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import redis
from django.http import HttpResponse
from pytest_django import DjangoAssertNumQueries
from pytest_django.fixtures import Settings
from redis.backoff import NoBackoff
from redis.retry import Retry
from rest_framework.test import APIClient

from accounts.models import User
from catalog.models import Book
from resilience import runtime as runtime_module
from resilience import services
from resilience.engine.limiter import Algorithm
from resilience.models import RateLimitPolicy
from resilience.ops import metrics
from resilience.runtime import get_runtime
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.conftest import client_for, make_policy

ALL_ALGORITHMS = [a.value for a in Algorithm]
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
REDUCED_CAPACITY = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
# An hour-long window: a fixed window's boundary cannot plausibly fall inside one test.
HOUR = 3600

_names = itertools.count(1)

# draft-ietf-httpapi-ratelimit-headers items: a quoted policy name and integer parameters.
_POLICY_ITEM = re.compile(r'"(?P<name>[a-z0-9_-]+)";q=(?P<q>0|[1-9][0-9]*);w=(?P<w>[1-9][0-9]*)')
_LIMIT_ITEM = re.compile(r'"(?P<name>[a-z0-9_-]+)";r=(?P<r>0|[1-9][0-9]*);t=(?P<t>0|[1-9][0-9]*)')
_LIST_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


def _parse_list(value: str, item: re.Pattern[str]) -> list[tuple[str, dict[str, int]]]:
    """Return (name, params) per list member, failing on anything the grammar does not allow."""
    assert value == value.strip(), f"surrounding whitespace in {value!r}"
    parsed = []
    for member in _LIST_SEPARATOR.split(value):
        match = item.fullmatch(member)
        assert match is not None, f"malformed member {member!r} in {value!r}"
        params = {k: int(v) for k, v in match.groupdict().items() if k != "name"}
        parsed.append((match["name"], params))
    names = [name for name, _ in parsed]
    assert len(names) == len(set(names)), f"a policy is listed twice in {value!r}"
    return parsed


def ratelimit_policies(response: HttpResponse) -> list[tuple[str, dict[str, int]]]:
    """Return the parsed RateLimit-Policy field, checking it agrees with the RateLimit field."""
    policies = _parse_list(response["RateLimit-Policy"], _POLICY_ITEM)
    limits = _parse_list(response["RateLimit"], _LIMIT_ITEM)
    assert [n for n, _ in policies] == [n for n, _ in limits]
    for (_, policy), (_, limit) in zip(policies, limits, strict=True):
        assert limit["r"] <= policy["q"]
    return policies


def ratelimits(response: HttpResponse) -> list[tuple[str, dict[str, int]]]:
    """Return the parsed RateLimit field (after checking both fields are well formed)."""
    ratelimit_policies(response)
    return _parse_list(response["RateLimit"], _LIMIT_ITEM)


def names_in_headers(response: HttpResponse) -> list[str]:
    return [name for name, _ in ratelimit_policies(response)]


def assert_no_ratelimit_headers(response: HttpResponse) -> None:
    assert "RateLimit-Policy" not in response
    assert "RateLimit" not in response


def assert_quota_exceeded(response: HttpResponse, violated: list[str]) -> dict[str, int]:
    """Check a 429 against the contract and return the RateLimit params of the first violated policy."""
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == QUOTA_EXCEEDED
    assert body["status"] == 429
    assert body["violated-policies"] == violated
    params = dict(ratelimits(response))
    for name in violated:
        assert params[name]["r"] == 0
    assert int(response["Retry-After"]) == max(params[name]["t"] for name in violated)
    assert int(response["Retry-After"]) >= 1
    return params[violated[0]]


def decisions(policy: str, outcome: str) -> float:
    return metrics.ratelimit_decisions.labels(policy, outcome)._value.get()


def store_errors() -> float:
    return sum(metrics.store_errors.labels(op)._value.get() for op in ("version", "hit"))


def hits(client: APIClient, count: int, path: str = "/api/books", **extra: str) -> list[int]:
    return [client.get(path, **extra).status_code for _ in range(count)]


# --- the header fields and the 429 -------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_matched_responses_carry_ratelimit_headers_counting_down(db: None, algorithm: str) -> None:
    make_policy(name="books-ip", algorithm=algorithm, limit=3)
    client = APIClient()

    seen = []
    for _ in range(3):
        response = client.get("/api/books")
        assert response.status_code == 200
        assert ratelimit_policies(response) == [("books-ip", {"q": 3, "w": HOUR})]
        [(name, params)] = ratelimits(response)
        assert name == "books-ip"
        assert 0 < params["t"] <= HOUR
        seen.append(params["r"])

    assert seen == [2, 1, 0]


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_exhausted_policy_answers_429_problem_with_retry_after(db: None, algorithm: str) -> None:
    make_policy(name="books-ip", algorithm=algorithm, limit=2)
    client = APIClient()
    assert hits(client, 2) == [200, 200]

    response = client.get("/api/books")

    params = assert_quota_exceeded(response, ["books-ip"])
    assert 1 <= params["t"] <= HOUR
    assert response.json()["instance"] == "/api/books"


def test_unmatched_paths_carry_no_ratelimit_headers(db: None) -> None:
    make_policy(pattern="/api/orders", limit=5)

    response = APIClient().get("/api/books")

    assert response.status_code == 200
    assert_no_ratelimit_headers(response)


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_all_matching_policies_must_admit_and_tightest_comes_first(db: None, algorithm: str) -> None:
    make_policy(name="wide", algorithm=algorithm, limit=5, priority=1)
    make_policy(name="tight", algorithm=algorithm, limit=2, priority=50)
    client = APIClient()

    first = client.get("/api/books")
    assert names_in_headers(first) == ["tight", "wide"]
    assert [p["r"] for _, p in ratelimits(first)] == [1, 4]
    assert client.get("/api/books").status_code == 200

    refused = client.get("/api/books")

    assert_quota_exceeded(refused, ["tight"])
    assert names_in_headers(refused) == ["tight", "wide"]
    # A refused request consumes nothing: "wide" still has the 3 left that two admissions left it.
    assert dict(ratelimits(refused))["wide"]["r"] == 3


def test_429_lists_every_violated_policy(db: None) -> None:
    make_policy(name="first", limit=1)
    make_policy(name="second", limit=1, algorithm="fixed_window")
    client = APIClient()
    assert client.get("/api/books").status_code == 200

    refused = client.get("/api/books")

    assert sorted(refused.json()["violated-policies"]) == ["first", "second"]
    params = dict(ratelimits(refused))
    assert int(refused["Retry-After"]) == max(params["first"]["t"], params["second"]["t"])


# --- dry run ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_dry_run_policy_never_blocks_but_counts_would_limit(db: None, algorithm: str) -> None:
    make_policy(name="dry", algorithm=algorithm, limit=1, mode="dry_run")
    before = decisions("dry", "dry_run_would_limit")
    client = APIClient()

    responses = [client.get("/api/books") for _ in range(4)]

    assert [r.status_code for r in responses] == [200] * 4
    for response in responses:
        assert_no_ratelimit_headers(response)
    assert decisions("dry", "dry_run_would_limit") - before == 3


def test_dry_run_policy_is_left_out_of_headers_beside_an_enforced_one(db: None) -> None:
    make_policy(name="dry", limit=1, mode="dry_run", priority=1)
    make_policy(name="enforced", limit=3)
    client = APIClient()

    responses = [client.get("/api/books") for _ in range(4)]

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    for response in responses:
        assert names_in_headers(response) == ["enforced"]
    assert responses[-1].json()["violated-policies"] == ["enforced"]


# --- keys ---------------------------------------------------------------------------------------


def test_staff_token_is_exempt_from_exempt_staff_policy_but_customers_are_not(staff: User, customer: User) -> None:
    make_policy(name="books-user", key="user", limit=2, exempt_staff=True)
    staff_client, customer_client = client_for(staff), client_for(customer)

    assert hits(staff_client, 5) == [200] * 5
    assert_no_ratelimit_headers(staff_client.get("/api/books"))
    assert hits(customer_client, 3) == [200, 200, 429]


def test_staff_signed_in_by_session_is_exempt_too(staff: User, customer: User) -> None:
    make_policy(name="books-user", key="user", limit=1, exempt_staff=True)
    staff_session, customer_session = APIClient(), APIClient()
    staff_session.force_login(staff)
    customer_session.force_login(customer)

    assert hits(staff_session, 3) == [200, 200, 200]
    assert hits(customer_session, 2) == [200, 429]


def test_staff_is_limited_by_a_policy_that_does_not_exempt_staff(staff: User) -> None:
    make_policy(name="books-user", key="user", limit=2)

    assert hits(client_for(staff), 3) == [200, 200, 429]


def test_user_key_gives_each_user_their_own_budget(make_user: Callable[..., User]) -> None:
    make_policy(name="books-user", key="user", limit=2)
    alice, bob = client_for(make_user()), client_for(make_user())

    assert hits(alice, 3) == [200, 200, 429]
    # Same address, different user: bob's budget is untouched by alice's.
    assert hits(bob, 3) == [200, 200, 429]


def test_user_key_counts_anonymous_clients_by_ip(customer: User) -> None:
    make_policy(name="books-user", key="user", limit=2)
    anonymous = APIClient()

    assert hits(anonymous, 3, REMOTE_ADDR="192.0.2.10") == [200, 200, 429]
    assert hits(anonymous, 1, REMOTE_ADDR="192.0.2.11") == [200]
    # A signed-in user from the exhausted address has their own budget.
    assert hits(client_for(customer), 1, REMOTE_ADDR="192.0.2.10") == [200]


def test_header_key_counts_per_header_value(db: None) -> None:
    make_policy(name="app", key="header", header_name="X-App-Id", limit=2)
    client = APIClient()

    assert hits(client, 3, HTTP_X_APP_ID="app-one") == [200, 200, 429]
    assert hits(client, 2, HTTP_X_APP_ID="app-two") == [200, 200]


def test_header_policy_ignores_requests_without_the_header(db: None) -> None:
    make_policy(name="app", key="header", header_name="X-App-Id", limit=1)
    client = APIClient()

    for response in [client.get("/api/books") for _ in range(3)]:
        assert response.status_code == 200
        assert_no_ratelimit_headers(response)
    # ... and they did not use up anybody's budget.
    assert hits(client, 2, HTTP_X_APP_ID="app-one") == [200, 429]


def test_global_key_is_one_budget_shared_by_every_address(db: None) -> None:
    make_policy(name="ceiling", key="global", limit=3)
    client = APIClient()

    statuses = [client.get("/api/books", REMOTE_ADDR=f"198.51.100.{i}").status_code for i in range(1, 5)]

    assert statuses == [200, 200, 200, 429]


# --- overrides ----------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_header_override_gives_a_partner_ten_times_the_limit(db: None, algorithm: str) -> None:
    make_policy(
        name="app", key="header", header_name="X-App-Id", algorithm=algorithm, limit=2,
        overrides={"partner-key": 20},
    )  # fmt: skip
    client = APIClient()

    partner = [client.get("/api/books", HTTP_X_APP_ID="partner-key") for _ in range(21)]

    assert [r.status_code for r in partner] == [200] * 20 + [429]
    assert ratelimit_policies(partner[0])[0][1]["q"] == 20
    assert hits(client, 3, HTTP_X_APP_ID="someone-else") == [200, 200, 429]


def test_ip_override_of_zero_blocks_that_address_at_once(db: None) -> None:
    make_policy(name="books-ip", limit=5, overrides={"203.0.113.66": 0})
    client = APIClient()

    blocked = client.get("/api/books", REMOTE_ADDR="203.0.113.66")

    assert_quota_exceeded(blocked, ["books-ip"])
    assert hits(client, 3, REMOTE_ADDR="203.0.113.67") == [200, 200, 200]


def test_ipv6_override_applies_to_its_whole_slash_64(db: None) -> None:
    make_policy(name="books-ip", limit=5, overrides={"2001:db8:bad:1::/64": 0})
    client = APIClient()

    assert hits(client, 1, REMOTE_ADDR="2001:db8:bad:1::7") == [429]
    assert hits(client, 1, REMOTE_ADDR="2001:db8:bad:2::7") == [200]


def test_user_override_by_username(make_user: Callable[..., User]) -> None:
    vip = make_user(username="vip-reader")
    make_policy(name="books-user", key="user", limit=1, overrides={"vip-reader": 4})

    assert hits(client_for(vip), 5) == [200, 200, 200, 200, 429]
    assert hits(client_for(make_user()), 2) == [200, 429]


# --- which requests a policy applies to ---------------------------------------------------------


def test_method_filter_leaves_other_methods_alone(customer: User) -> None:
    make_policy(name="books-post", methods="POST", limit=1)
    client = client_for(customer)

    for response in [client.get("/api/books") for _ in range(3)]:
        assert response.status_code == 200
        assert_no_ratelimit_headers(response)
    first_post = client.post("/api/books", {}, format="json")
    assert first_post.status_code == 403  # a customer may not create books, but the POST counted
    assert names_in_headers(first_post) == ["books-post"]
    assert_quota_exceeded(client.post("/api/books", {}, format="json"), ["books-post"])


def test_prefix_matches_paths_under_it_only(make_book: Callable[..., Book]) -> None:
    book = make_book()
    make_policy(name="books-prefix", pattern="/api/books/", limit=1)
    client = APIClient()

    assert hits(client, 2, f"/api/books/{book.pk}") == [200, 429]
    assert hits(client, 2, "/api/books") == [200, 200]


def test_regex_matches_book_detail_paths_only(make_book: Callable[..., Book]) -> None:
    book = make_book()
    make_policy(name="detail", match_type="regex", pattern=r"^/api/books/\d+$", limit=1)
    client = APIClient()

    assert hits(client, 2, f"/api/books/{book.pk}") == [200, 429]
    # The budget is per client across every matching path.
    assert hits(client, 1, "/api/books/999999") == [429]
    assert hits(client, 2, "/api/books/search?q=x") == [200, 200]
    assert hits(client, 2, "/api/books") == [200, 200]


def test_route_name_matches_the_named_url_pattern(make_book: Callable[..., Book]) -> None:
    book = make_book()
    make_policy(name="detail-route", match_type="route", pattern="books-detail", limit=1)
    client = APIClient()

    assert hits(client, 2, f"/api/books/{book.pk}") == [200, 429]
    assert hits(client, 2, "/api/books") == [200, 200]


def test_tag_matches_views_that_declare_it(db: None) -> None:
    make_policy(name="search-tag", match_type="tag", pattern="search", limit=2)
    client = APIClient()

    assert hits(client, 3, "/api/books/search?q=dune") == [200, 200, 429]
    assert hits(client, 2, "/api/books") == [200, 200]


def test_disabled_policy_is_ignored(db: None) -> None:
    make_policy(name="off", limit=0, enabled=False)

    response = APIClient().get("/api/books")

    assert response.status_code == 200
    assert_no_ratelimit_headers(response)


# --- the client address -------------------------------------------------------------------------


def test_forged_forwarded_for_does_not_escape_ip_limit_without_trusted_proxies(db: None, settings: Settings) -> None:
    settings.TRUSTED_PROXY_COUNT = 0
    make_policy(name="books-ip", limit=2)
    client = APIClient()

    statuses = [
        client.get("/api/books", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR=f"10.9.9.{i}").status_code
        for i in range(3)
    ]

    assert statuses == [200, 200, 429]


def test_one_trusted_proxy_makes_the_rightmost_forwarded_entry_the_client(db: None, settings: Settings) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    make_policy(name="books-ip", limit=2)
    client = APIClient()
    proxy = {"REMOTE_ADDR": "10.0.0.1"}

    # The client forges entries to the left; the proxy appends the address it saw.
    forged = [
        client.get("/api/books", HTTP_X_FORWARDED_FOR=f"1.1.1.{i}, 198.51.100.7", **proxy).status_code for i in range(3)
    ]
    other = client.get("/api/books", HTTP_X_FORWARDED_FOR="198.51.100.7, 198.51.100.8", **proxy)

    assert forged == [200, 200, 429]
    assert other.status_code == 200


@pytest.mark.parametrize(
    ("header", "meta", "client_a", "client_a_other_port", "client_b"),
    [
        ("x-forwarded-for", "HTTP_X_FORWARDED_FOR", "10.6.6.1:5123", "10.6.6.1:6000", "10.6.6.2:5123"),
        ("x-forwarded-for", "HTTP_X_FORWARDED_FOR", "[2001:db8:a::1]:443", "2001:db8:a::2", "[2001:db8:b::1]:443"),
        ("forwarded", "HTTP_FORWARDED", 'for="10.6.6.1:5123"', "for=10.6.6.1", 'for="10.6.6.2:5123"'),
        ("forwarded", "HTTP_FORWARDED", 'for="[2001:db8:a::1]:443"', 'for="[2001:db8:a::1]"', 'for="[2001:db8:b::1]"'),
    ],
)
def test_clients_behind_one_trusted_proxy_that_adds_ports_are_limited_separately(
    db: None, settings: Settings, header: str, meta: str, client_a: str, client_a_other_port: str, client_b: str
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    settings.TRUSTED_PROXY_HEADER = header
    make_policy(name="books-ip", limit=2)
    client = APIClient()
    proxy = {"REMOTE_ADDR": "127.0.0.1"}

    first = [client.get("/api/books", **{meta: client_a}, **proxy).status_code for _ in range(2)]
    # A new connection from the same client comes from another port: still the same client.
    same_client = client.get("/api/books", **{meta: client_a_other_port}, **proxy)
    other_client = client.get("/api/books", **{meta: client_b}, **proxy)

    assert first == [200, 200]
    assert same_client.status_code == 429
    assert other_client.status_code == 200


def test_clients_the_proxy_cannot_name_count_against_the_proxy_not_everyone(db: None, settings: Settings) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    settings.TRUSTED_PROXY_HEADER = "forwarded"
    make_policy(name="books-ip", limit=2)
    client = APIClient()
    proxy = {"REMOTE_ADDR": "10.0.0.1"}

    # Each garbled or anonymous report is a key a client could otherwise pick at will: they all
    # count against the proxy that forwarded them.
    unnamed = [
        client.get("/api/books", HTTP_FORWARDED=value, **proxy).status_code
        for value in ("for=unknown", "for=_r4nd0m1", 'for="x, for=10.6.6.9')
    ]
    honest = client.get("/api/books", HTTP_FORWARDED='for="10.6.6.1:5123"', **proxy)

    assert unnamed == [200, 200, 429]
    assert honest.status_code == 200


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_ipv6_clients_share_a_budget_per_slash_64(db: None, algorithm: str) -> None:
    make_policy(name="books-ip", algorithm=algorithm, limit=2)
    client = APIClient()

    same_64 = [
        client.get("/api/books", REMOTE_ADDR=address).status_code
        for address in ("2001:db8:1:2::1", "2001:db8:1:2::ffff", "2001:db8:1:2:abcd::9")
    ]

    assert same_64 == [200, 200, 429]
    assert hits(client, 2, REMOTE_ADDR="2001:db8:1:3::1") == [200, 200]


# --- the shared store failing -------------------------------------------------------------------


class FakeMonotonic:
    """Stand in for the time module inside the runtime, so the retry interval passes without waiting."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def dead_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """Point this worker's runtime at a Redis nobody listens on; give the real one back afterwards."""
    runtime = get_runtime()
    good = runtime.shared
    client = redis.Redis(
        host="127.0.0.1",
        port=1,
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    clock = FakeMonotonic()
    monkeypatch.setattr(runtime_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    runtime.shared = RedisLimiterStore(client, version_key=good.version_key)
    runtime._down_until = 0.0
    runtime.invalidate()
    yield SimpleNamespace(runtime=runtime, good=good, clock=clock)
    runtime.shared = good
    runtime._down_until = 0.0
    runtime.invalidate()


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_store_down_allow_policy_keeps_serving_and_limits_in_process(
    db: None, dead_store: SimpleNamespace, algorithm: str
) -> None:
    make_policy(name="books-open", algorithm=algorithm, limit=2, on_store_failure="allow")
    errors_before = store_errors()
    outcome_before = decisions("books-open", "store_error")
    client = APIClient()

    responses = [client.get("/api/books") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [p["r"] for r in responses[:2] for _, p in ratelimits(r)] == [1, 0]
    assert_quota_exceeded(responses[2], ["books-open"])
    assert store_errors() > errors_before
    assert decisions("books-open", "store_error") - outcome_before == 3


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_store_down_a_worker_enforces_its_share_of_the_fleets_limit(
    db: None, dead_store: SimpleNamespace, algorithm: str
) -> None:
    make_policy(name="books-share", algorithm=algorithm, limit=20, on_store_failure="allow")
    dead_store.runtime.fleet_workers = 4  # what its last report to Redis counted
    client = APIClient()

    responses = [client.get("/api/books") for _ in range(7)]

    assert [r.status_code for r in responses] == [200] * 5 + [429] * 2
    assert {p["q"] for r in responses for _, p in ratelimit_policies(r)} == {5}  # clients are told the share


def test_a_workers_report_counts_the_fleets_live_workers(db: None) -> None:
    runtime = get_runtime()
    client = runtime.shared.client
    now = time.time()
    client.hset(
        runtime_module.workers_key(),
        mapping={
            "other:1": json.dumps({"version": "1", "at": now - 1}),
            "other:2": json.dumps({"version": "1", "at": now - 30}),
            "gone:3": json.dumps({"version": "1", "at": now - runtime_module.LIVE_WORKER_SECONDS - 5}),
            "broken:4": "not json",
        },
    )
    runtime._beat_at = 0.0  # due to report

    assert APIClient().get("/api/books").status_code == 200

    assert runtime.fleet_workers == 3  # the two others that reported lately, and itself


def test_store_down_deny_policy_answers_503_problem(db: None, dead_store: SimpleNamespace) -> None:
    make_policy(name="books-closed", limit=100, on_store_failure="deny")
    outcome_before = decisions("books-closed", "store_error")

    response = APIClient().get("/api/books")

    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == REDUCED_CAPACITY
    assert int(response["Retry-After"]) >= 1
    assert decisions("books-closed", "store_error") - outcome_before == 1


def test_store_down_deny_policy_in_dry_run_does_not_refuse(db: None, dead_store: SimpleNamespace) -> None:
    make_policy(name="books-dry", limit=100, mode="dry_run", on_store_failure="deny")

    assert hits(APIClient(), 2) == [200, 200]


def test_store_down_deny_policy_does_not_refuse_unmatched_paths(db: None, dead_store: SimpleNamespace) -> None:
    make_policy(name="orders-closed", pattern="/api/orders", limit=100, on_store_failure="deny")

    assert APIClient().get("/api/books").status_code == 200


def test_shared_limiting_resumes_after_the_retry_interval(
    db: None, dead_store: SimpleNamespace, settings: Settings
) -> None:
    policy = make_policy(name="books-open", limit=2, on_store_failure="allow")
    client = APIClient()
    assert hits(client, 2) == [200, 200]  # counted in process only
    assert dead_store.runtime.store_available() is False

    dead_store.runtime.shared = dead_store.good  # Redis is back ...
    assert hits(client, 1) == [429]  # ... but this worker stays off it until the interval passes
    dead_store.clock.now += settings.RESILIENCE_STORE_RETRY_SECONDS + 0.01

    # Redis never saw the in-process hits: the budget there is fresh, and now it is shared.
    assert hits(client, 3) == [200, 200, 429]
    usage = services.policy_usage(policy=policy, key="127.0.0.1")
    assert usage is not None
    assert usage.remaining == 0


# --- cost of a refusal --------------------------------------------------------------------------


def test_rejected_request_costs_no_database_query(db: None, django_assert_num_queries: DjangoAssertNumQueries) -> None:
    make_policy(name="books-ip", limit=1)
    client = APIClient()
    assert client.get("/api/books").status_code == 200  # loads the policy snapshot

    with django_assert_num_queries(0):
        response = client.get("/api/books")

    assert response.status_code == 429


# --- the policies the data migration ships ------------------------------------------------------


@pytest.mark.default_policies
def test_default_policies_exist(db: None) -> None:
    policies = {p.name: p for p in RateLimitPolicy.objects.all()}

    assert {"search-ip", "orders-ip", "login-ip", "global-ceiling"} <= set(policies)
    search = policies["search-ip"]
    assert (search.key, search.limit, search.period) == ("ip", 100, 60)
    assert (search.match_type, search.pattern) == ("prefix", "/api/books/search")
    assert policies["orders-ip"].key == "ip"
    assert policies["login-ip"].key == "ip"
    assert policies["login-ip"].method_set() == {"POST"}
    assert policies["global-ceiling"].key == "global"
    assert all(p.enabled and p.mode == "enforce" for p in policies.values())


@pytest.mark.default_policies
def test_default_search_limit_admits_a_burst_of_20_then_refills_at_100_a_minute(db: None) -> None:
    client = APIClient()
    address = {"REMOTE_ADDR": "192.0.2.200"}
    search = RateLimitPolicy.objects.get(name="search-ip")
    assert (search.algorithm, search.limit, search.period, search.burst) == ("token_bucket", 100, 60, 20)

    statuses = [client.get("/api/books/search?q=x", **address).status_code for _ in range(20)]
    refused = client.get("/api/books/search?q=x", **address)

    assert statuses == [200] * 20
    params = assert_quota_exceeded(refused, ["search-ip"])
    assert params["t"] == 1  # the next token comes 0.6 s later (100 per 60 s), rounded up
    assert refused["Retry-After"] == "1"
    assert '"search-ip";q=20;w=12' in refused["RateLimit-Policy"]  # a full bucket refills in 12 s
    assert names_in_headers(refused)[0] == "search-ip"
    assert "global-ceiling" in names_in_headers(refused)
    # The next token comes 0.6 s later: wait for it rather than sleep a fixed time, so a slow
    # request on a loaded machine cannot let a second token in. A refused try consumes nothing.
    deadline = time.monotonic() + 10
    while (admitted := client.get("/api/books/search?q=x", **address)).status_code == 429:
        assert time.monotonic() < deadline, "no token came back within 10 s"
        time.sleep(0.05)
    assert admitted.status_code == 200
    assert dict(ratelimits(admitted))["search-ip"]["r"] == 0  # one token came back, not the burst
    assert client.get("/api/books/search?q=x", REMOTE_ADDR="192.0.2.201").status_code == 200
