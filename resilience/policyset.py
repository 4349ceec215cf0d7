"""An in-process, compiled snapshot of the enabled policies: matching a request needs no query."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from resilience.breaker import BreakerConfig
from resilience.limiter import Algorithm
from resilience.metrics import ratelimit_decisions
from resilience.models import CircuitBreakerPolicy, RateLimitPolicy, parse_status_set

RouteInfo = tuple[str, frozenset[str]]  # (url route name, view tags)


@dataclass(frozen=True, slots=True)
class Matcher:
    """Decide whether a request's method and path (or route) fall under a policy."""

    methods: frozenset[str]
    kind: str
    pattern: str
    regex: re.Pattern[str] | None = None

    @classmethod
    def build(cls, methods: Iterable[str], kind: str, pattern: str) -> Matcher:
        return cls(
            methods=frozenset(methods),
            kind=kind,
            pattern=pattern,
            regex=re.compile(pattern) if kind == "regex" else None,
        )

    @property
    def needs_route(self) -> bool:
        return self.kind in ("route", "tag")

    def matches(self, method: str, path: str, route: Callable[[], RouteInfo]) -> bool:
        """Return True if the request falls under this matcher; route() resolves lazily."""
        if self.methods and method not in self.methods:
            return False
        if self.kind == "prefix":
            return path.startswith(self.pattern)
        if self.kind == "regex":
            return self.regex.match(path) is not None  # type: ignore[union-attr]
        if self.kind == "code":
            return False
        name, tags = route()
        return name == self.pattern if self.kind == "route" else self.pattern in tags


@dataclass(frozen=True, slots=True)
class RateLimitRule:
    """One enabled rate-limit policy, compiled."""

    id: int
    name: str
    priority: int
    matcher: Matcher
    key: str  # ip | user | header | global
    header_meta: str  # e.g. HTTP_X_APP_ID
    algorithm: Algorithm
    limit: int
    period: int
    burst: int | None
    enforce: bool
    exempt_staff: bool
    fail_open: bool
    epoch: int
    overrides: dict[str, int] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)  # outcome -> prometheus child, resolved once

    @property
    def label(self) -> str:
        """Return the name the dashboard's per-minute counters use for this policy."""
        return str(self.id)

    def count(self, outcome: str) -> None:
        child = self.counters.get(outcome)
        if child is None:
            child = self.counters[outcome] = ratelimit_decisions.labels(self.name, outcome)
        child.inc()


@dataclass(frozen=True, slots=True)
class BreakerRule:
    """One enabled circuit-breaker policy, compiled."""

    id: int
    name: str
    matcher: Matcher
    config: BreakerConfig
    failure_statuses: frozenset[int]
    slow_call_seconds: float | None
    stale: bool
    stale_max_age: int

    def is_failure(self, status: int, elapsed: float) -> bool:
        """Return True if a call that answered status after elapsed seconds counts as failed."""
        if status in self.failure_statuses:
            return True
        return self.slow_call_seconds is not None and elapsed > self.slow_call_seconds


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every enabled policy at one version of the policy tables."""

    version: int
    ratelimits: tuple[RateLimitRule, ...] = ()
    breakers: tuple[BreakerRule, ...] = ()
    breakers_by_name: dict[str, BreakerRule] = field(default_factory=dict)

    @property
    def needs_route(self) -> bool:
        return any(r.matcher.needs_route for r in self.ratelimits) or any(b.matcher.needs_route for b in self.breakers)

    def match_ratelimits(self, method: str, path: str, route: Callable[[], RouteInfo]) -> list[RateLimitRule]:
        return [rule for rule in self.ratelimits if rule.matcher.matches(method, path, route)]

    def match_breakers(self, method: str, path: str, route: Callable[[], RouteInfo]) -> list[BreakerRule]:
        return [rule for rule in self.breakers if rule.matcher.matches(method, path, route)]


def header_meta_name(header: str) -> str:
    """Return the WSGI META key of an HTTP header name."""
    return "HTTP_" + header.upper().replace("-", "_")


def compile_policies(version: int) -> PolicySet:
    """Load the enabled policies from the database and compile them."""
    from accounts.models import User

    rules = []
    policies = list(RateLimitPolicy.objects.filter(enabled=True).prefetch_related("overrides"))
    usernames = {
        o.key_value
        for p in policies
        if p.key == RateLimitPolicy.Key.USER
        for o in p.overrides.all()
        if not o.key_value.isdigit()
    }
    ids_by_username = (
        dict(User.objects.filter(username__in=usernames).values_list("username", "id")) if usernames else {}
    )
    for p in policies:
        overrides: dict[str, int] = {}
        for o in p.overrides.all():
            value = o.key_value
            if p.key == RateLimitPolicy.Key.USER:
                user_id = int(value) if value.isdigit() else ids_by_username.get(value)
                if user_id is None:
                    continue
                value = f"u{user_id}"
            overrides[value] = o.limit
        rules.append(
            RateLimitRule(
                id=p.pk,
                name=p.name,
                priority=p.priority,
                matcher=Matcher.build(p.method_set(), p.match_type, p.pattern),
                key=p.key,
                header_meta=header_meta_name(p.header_name) if p.header_name else "",
                algorithm=Algorithm(p.algorithm),
                limit=p.limit,
                period=p.period,
                burst=p.burst,
                enforce=p.mode == RateLimitPolicy.Mode.ENFORCE,
                exempt_staff=p.exempt_staff,
                fail_open=p.on_store_failure == RateLimitPolicy.OnStoreFailure.ALLOW,
                epoch=p.epoch,
                overrides=overrides,
            )
        )
    rules.sort(key=lambda r: (r.priority, r.name))
    breakers = tuple(compile_breaker(p) for p in CircuitBreakerPolicy.objects.filter(enabled=True))
    return PolicySet(
        version=version,
        ratelimits=tuple(rules),
        breakers=breakers,
        breakers_by_name={b.name: b for b in breakers},
    )


def breaker_config(policy: CircuitBreakerPolicy) -> BreakerConfig:
    """Return the engine configuration of a breaker policy."""
    return BreakerConfig(
        name=policy.name,
        failure_threshold=policy.failure_threshold,
        failure_rate=float(policy.failure_rate),
        window_size=policy.window_size,
        window_kind=policy.window_kind,
        minimum_calls=policy.minimum_calls,
        open_seconds=float(policy.open_seconds),
        half_open_max_calls=policy.half_open_max_calls,
    )


def compile_breaker(policy: CircuitBreakerPolicy) -> BreakerRule:
    """Compile one breaker policy."""
    return BreakerRule(
        id=policy.pk,
        name=policy.name,
        matcher=Matcher.build(policy.method_set(), policy.match_type, policy.pattern),
        config=breaker_config(policy),
        failure_statuses=parse_status_set(policy.failure_statuses),
        slow_call_seconds=policy.slow_call_ms / 1000 if policy.slow_call_ms else None,
        stale=policy.fallback == CircuitBreakerPolicy.Fallback.STALE,
        stale_max_age=policy.stale_max_age,
    )
