"""Rate limits in code, by name: the counterpart of ``with breaker("search"):``.

``with limit("admin-login", key=username):`` (or ``@limit("send-mail", key="all")``) counts one
attempt against every enabled rate-limit policy of match type "code" whose pattern is that name,
in the same Redis round trip (the admission script), with the same algorithms, overrides, dry run,
staff exemption, store-failure rule and memory of refusals as the middleware's limits. Several
policies may share a name: one counted by the client's IP, one by the key code passes.

What a code policy counts by:
    user    the ``key`` code passes (a username tried at sign-in, say), NFKC-normalised, casefolded
            and hashed: "Admin" and "ａｄｍｉｎ" share a counter, and Redis never holds the name.
    ip      the client address of the request being served (as the middleware counts it).
    header  that header of the request being served (hashed).
    global  everyone together.

A refused call raises LimitRefused before the block runs, carrying the middleware's own 429 (or,
for a fail-closed policy whose store is down, its 503); DRF views and the middleware answer with
it, and a view may render its own page from it. An admitted call's RateLimit fields are added to
the response with the middleware's. With no enabled policy of that name, everything passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.http import HttpRequest, HttpResponse

from resilience.http.decision import SHOWN, RequestDecision, RequestFacts, limit_spec
from resilience.http.middleware import current_request
from resilience.models import code_key_value, hash_key_value
from resilience.runtime import get_runtime
from resilience.runtime.policies import RateLimitRule

F = TypeVar("F", bound=Callable[..., Any])


class LimitRefused(Exception):  # noqa: N818 - reads as what happened: the limit refused the call
    """A code limit refused the call; ``response`` is the 429 (or 503) the middleware would send."""

    def __init__(self, name: str, response: HttpResponse) -> None:
        super().__init__(f"limit {name!r} refused the call ({response.status_code})")
        self.name = name
        self.response = response

    @property
    def retry_after(self) -> int:
        return int(self.response.get("Retry-After", "1"))


def _value(rule: RateLimitRule, key: str | None, facts: RequestFacts | None) -> str | None:
    """Return what the code policy counts this call by, or None when it cannot apply to this call."""
    if rule.key == "global":
        return "all"
    if rule.key == "user":
        return code_key_value(key) if key is not None else None
    if facts is None:  # a per-IP or per-header policy needs a request: outside one it does not apply
        return None
    if rule.key == "ip":
        return facts.ip
    value = facts.request.META.get(rule.header_meta)
    return hash_key_value(value) if value else None


def limit_check(name: str, key: str | None = None, request: HttpRequest | None = None) -> None:
    """Count one call against the code policies named ``name``; raise LimitRefused if one refuses it."""
    started = (time.perf_counter(), time.thread_time())
    runtime = get_runtime()
    snapshot = runtime.snapshot()
    rules = snapshot.code_limits.get(name)
    if not rules:
        return
    request = request if request is not None else current_request.get()
    facts = RequestFacts(request) if request is not None else None
    applied = []
    for rule in rules:
        if rule.exempt_staff and facts is not None and facts.principal.is_staff:
            continue
        value = _value(rule, key, facts)
        if value is not None:
            applied.append((rule, limit_spec(rule, value)))
    if not applied:
        return
    # Outside a request (a management command, a task), the refusal is still a response: for the caller to read.
    decision = RequestDecision(request, runtime, started, snapshot.version, applied)  # type: ignore[arg-type]
    refused = decision.known_limited()
    if refused is not None:
        raise LimitRefused(name, refused)
    decision.admit()
    before = getattr(request, SHOWN, None) if request is not None else None
    outcome = decision.judge_limits(admitted_before=before)
    if isinstance(outcome, HttpResponse):
        raise LimitRefused(name, outcome)
    if request is not None and outcome:
        setattr(request, SHOWN, [*(before or ()), *outcome])


class limit:  # noqa: N801 - reads as a keyword, like breaker: `with limit("admin-login", key=username):`
    """Count a block or a function call against the code rate-limit policies of that name.

    As a decorator, ``key`` may be a function of the decorated function's arguments.
    """

    def __init__(
        self, name: str, key: str | Callable[..., str | None] | None = None, request: HttpRequest | None = None
    ) -> None:
        self.name = name
        self.key = key
        self.request = request

    def __enter__(self) -> limit:
        key = self.key() if callable(self.key) else self.key
        limit_check(self.name, key, self.request)
        return self

    def __exit__(self, *exc: object) -> None:
        # Attempts are counted, not outcomes: the decision was made before the block ran.
        return None

    def __call__(self, func: F) -> F:
        @wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            key = self.key(*args, **kwargs) if callable(self.key) else self.key
            limit_check(self.name, key, self.request)
            return func(*args, **kwargs)

        return guarded  # type: ignore[return-value]
