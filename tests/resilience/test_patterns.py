"""Staff regular expressions run on RE2: a crafted path costs microseconds, never a worker."""

from __future__ import annotations

import signal
import statistics
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import pytest
from rest_framework.test import APIClient

from resilience.engine.patterns import MAX_MATCH_PATH
from resilience.models import RateLimitPolicy
from resilience.runtime import get_runtime
from resilience.runtime.policies import Matcher
from tests.live import LiveServer, Reply, request

# Catastrophic for a backtracking engine: each extra "a" doubles Python re's work on a path that
# almost matches. Four anonymous requests with a 37-byte path froze two gunicorn workers for 60 s.
CRAFTED = r"^/api/(a+)+$"
# About 4 KB: the longest path whose request line gunicorn accepts (4094 bytes) is a little longer.
LONG = 4_000


def crafted_path(length: int) -> str:
    """Return a path of ``length`` characters that almost matches CRAFTED."""
    return "/api/" + "a" * (length - 6) + "!"


@pytest.fixture
def deadline() -> Iterator[Callable[[float], None]]:
    """Return arm(seconds): past it, the test fails with TimeoutError instead of hanging (SIGALRM)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("still matching: the pattern engine backtracks")

    previous = signal.signal(signal.SIGALRM, expired)

    def arm(seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def no_route() -> tuple[str, frozenset[str]]:
    return ("", frozenset())


@pytest.mark.parametrize("length", [37, 256, MAX_MATCH_PATH])
def test_matcher_decides_a_crafted_path_in_linear_time(deadline: Callable[[float], None], length: int) -> None:
    matcher = Matcher.build([], "regex", CRAFTED)
    path = crafted_path(length)
    # A backtracking engine needs about 2**length steps here: over a minute at the shortest length, so it
    # cannot beat even a generous deadline, however loaded the machine.
    deadline(5)

    assert matcher.matches("GET", path, no_route) is False
    assert matcher.matches("GET", "/api/" + "a" * (length - 5), no_route) is True  # the same length, matching


def test_path_over_the_cap_counts_as_matching_every_regex_policy() -> None:
    # Never run on the pattern, whatever it is: padding a path can add limits, never escape one.
    matcher = Matcher.build([], "regex", r"^/api/books/\d+$")

    assert matcher.matches("GET", "/api/books/" + "0" * (MAX_MATCH_PATH - 12) + "1", no_route) is True
    assert matcher.matches("GET", "/api/books/" + "0" * MAX_MATCH_PATH + "1", no_route) is True
    assert matcher.matches("GET", "/api/orders/" + "x" * MAX_MATCH_PATH, no_route) is True
    assert matcher.matches("GET", "/api/orders/1", no_route) is False


def test_crafted_paths_are_answered_quickly_and_counted_by_the_policy(
    db: None, deadline: Callable[[float], None]
) -> None:
    policy = RateLimitPolicy(name="crafted", match_type="regex", pattern=CRAFTED, limit=2, period=3600)
    policy.full_clean()
    policy.save()
    get_runtime().invalidate()
    client = APIClient()
    deadline(10)

    # Under the cap the pattern runs (and fails to match); over it, the path counts as matching.
    under, over = client.get(crafted_path(MAX_MATCH_PATH)), client.get(crafted_path(LONG))
    counted = [client.get(crafted_path(LONG)) for _ in range(2)]

    assert under.status_code == 404
    assert "RateLimit" not in under
    assert over.status_code == 404
    assert over["RateLimit"] == '"crafted";r=1;t=3600'
    assert [r.status_code for r in counted] == [404, 429]
    assert client.get("/api/books").status_code == 200


@pytest.mark.live
def test_crafted_paths_never_stall_gunicorn_workers(live_servers: Callable[..., LiveServer]) -> None:
    policy = RateLimitPolicy(name="crafted-live", match_type="regex", pattern=CRAFTED, limit=10_000, period=3600)
    policy.full_clean()
    policy.save()
    server = live_servers(workers=2)
    paths = [crafted_path(LONG), crafted_path(MAX_MATCH_PATH), crafted_path(37)]

    # One at a time: what a crafted path costs a worker, request line to last byte.
    seconds: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(5):
        for path in paths:
            reply = request(server.port, path, timeout=5)
            assert reply.status == 404
            seconds[path].append(reply.seconds)
    for path, times in seconds.items():
        assert statistics.median(times) < 0.05, (len(path), times)
        assert max(times) < 0.5, (len(path), times)

    # Four at once, as in the attack, with an ordinary client beside them on another address.
    replies: list[Reply] = []

    def send(path: str, source: str) -> None:
        replies.append(request(server.port, path, source=source, timeout=5))

    attack = [threading.Thread(target=send, args=(crafted_path(LONG), f"127.0.0.{10 + i}")) for i in range(4)]
    for thread in attack:
        thread.start()
    ordinary = request(server.port, "/api/books", source="127.0.0.99", timeout=5)
    for thread in attack:
        thread.join()

    assert ordinary.status == 200
    assert ordinary.seconds < 1.0
    assert sorted(r.status for r in replies) == [404] * 4
    assert all(r.header("RateLimit-Policy") == '"crafted-live";q=10000;w=3600' for r in replies)
    assert max(r.seconds for r in replies) < 1.0
