"""An in-process, compiled snapshot of the enabled policies: matching a request needs no query.

Compiling checks each row's bounded numbers and name with the admin form's own validators and
with the engine's validation (the bounds the Lua scripts use), and compiles its pattern with RE2.
A row that fails (written by a shell, or saved before a bound existed) is left out of the snapshot
and listed in ``PolicySet.errors``: one bad row never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db.models import Model

from resilience.engine.breaker import BreakerConfig
from resilience.engine.limiter import Algorithm, LimitSpec, validate
from resilience.engine.patterns import PatternError, compile_pattern, path_matches
from resilience.models import (
    CircuitBreakerPolicy,
    ConcurrencyPolicy,
    Match,
    RateLimitPolicy,
    code_key_value,
    parse_status_set,
)
from resilience.ops.metrics import ratelimit_decisions

RouteInfo = tuple[str, frozenset[str]]  # (url route name, view tags)

RATELIMIT = "ratelimit"
BREAKER = "breaker"
CONCURRENCY = "concurrency"


class PolicyError(Exception):
    """A policy that cannot be used: left out of the snapshot (stage "compile") or of one request."""

    def __init__(self, kind: str, name: str, stage: str, reason: str, policy_id: int | None = None) -> None:
        super().__init__(f"{kind} policy {name!r} ({stage}): {reason}")
        self.kind = kind  # RATELIMIT, BREAKER or CONCURRENCY
        self.name = name
        self.stage = stage
        self.reason = reason
        self.policy_id = policy_id


@dataclass(frozen=True, slots=True)
class Matcher:
    """Decide whether a request's method and path (or route) fall under a policy."""

    methods: frozenset[str]
    kind: str
    pattern: str
    regex: Any = None  # an RE2 program (resilience/engine/patterns.py)

    @classmethod
    def build(cls, methods: Iterable[str], kind: str, pattern: str) -> Matcher:
        """Return the matcher; raise PatternError for a regex RE2 cannot run in linear time."""
        return cls(
            methods=frozenset(methods),
            kind=kind,
            pattern=pattern,
            regex=compile_pattern(pattern) if kind == "regex" else None,
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
            return path_matches(self.regex, path)
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
    specs: dict[str, Any] = field(default_factory=dict)  # counted value -> LimitSpec (resilience/http/decision.py)

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
class ConcurrencyRule:
    """One enabled concurrency policy (bulkhead), compiled."""

    id: int
    name: str
    matcher: Matcher
    key: str  # ip | user | header | global
    header_meta: str
    max_in_flight: int
    max_wait_ms: int
    lease_seconds: int
    enforce: bool
    fail_open: bool
    floor: int | None = None  # adaptive: the limit moves between this and max_in_flight (runtime/adaptive.py)
    target_seconds: float = 1.0  # adaptive: a call slower than this counts as slow


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every enabled policy at one version of the policy tables."""

    version: int
    ratelimits: tuple[RateLimitRule, ...] = ()  # those requests match (code-only ones are in code_limits)
    breakers: tuple[BreakerRule, ...] = ()
    breakers_by_name: dict[str, BreakerRule] = field(default_factory=dict)
    # Rate limits of match type "code", by the name code asks for (their pattern): limit("admin-login").
    code_limits: dict[str, tuple[RateLimitRule, ...]] = field(default_factory=dict)
    errors: tuple[PolicyError, ...] = ()  # enabled policies left out: they cannot be used as saved
    concurrency: tuple[ConcurrencyRule, ...] = ()
    concurrency_by_name: dict[str, ConcurrencyRule] = field(default_factory=dict)

    @property
    def needs_route(self) -> bool:
        return (
            any(r.matcher.needs_route for r in self.ratelimits)
            or any(b.matcher.needs_route for b in self.breakers)
            or any(c.matcher.needs_route for c in self.concurrency)
        )

    def match_concurrency(
        self, method: str, path: str, route: Callable[[], RouteInfo], failed: list[PolicyError] | None = None
    ) -> list[ConcurrencyRule]:
        """Return the bulkheads matching the request (see _matching)."""
        return _matching(self.concurrency, CONCURRENCY, method, path, route, failed)

    def match_ratelimits(
        self, method: str, path: str, route: Callable[[], RouteInfo], failed: list[PolicyError] | None = None
    ) -> list[RateLimitRule]:
        """Return the rules matching the request (see _matching)."""
        return _matching(self.ratelimits, RATELIMIT, method, path, route, failed)

    def match_breakers(
        self, method: str, path: str, route: Callable[[], RouteInfo], failed: list[PolicyError] | None = None
    ) -> list[BreakerRule]:
        """Return the breakers matching the request (see _matching)."""
        return _matching(self.breakers, BREAKER, method, path, route, failed)


R = TypeVar("R", RateLimitRule, BreakerRule, ConcurrencyRule)


def _matching(
    rules: Sequence[R],
    kind: str,
    method: str,
    path: str,
    route: Callable[[], RouteInfo],
    failed: list[PolicyError] | None,
) -> list[R]:
    """Return the rules matching the request; a rule whose matching raises is left out and added to failed."""
    try:
        return [rule for rule in rules if rule.matcher.matches(method, path, route)]
    except Exception:  # noqa: BLE001 - rare: redo it rule by rule to find the one at fault
        return _match_each(rules, kind, method, path, route, failed)


def _match_each(
    rules: Iterable[Any],
    kind: str,
    method: str,
    path: str,
    route: Callable[[], RouteInfo],
    failed: list[PolicyError] | None,
) -> list[Any]:
    """Match rule by rule, leaving out (and reporting in failed) each rule whose matching raises."""
    matched = []
    for rule in rules:
        try:
            if rule.matcher.matches(method, path, route):
                matched.append(rule)
        except Exception as e:  # noqa: BLE001 - one policy that cannot be decided must not fail the request
            if failed is not None:
                failed.append(PolicyError(kind, rule.name, "match", repr(e), rule.id))
    return matched


def header_meta_name(header: str) -> str:
    """Return the WSGI META key of an HTTP header name."""
    return "HTTP_" + header.upper().replace("-", "_")


def compile_policies(version: int) -> PolicySet:
    """Load the enabled policies from the database and compile every one that can be used."""
    rules = []
    errors: list[PolicyError] = []
    policies = list(RateLimitPolicy.objects.filter(enabled=True).prefetch_related("overrides"))
    ids_by_username = user_ids(policies)
    for p in policies:
        try:
            rules.append(compile_ratelimit(p, ids_by_username))
        except PolicyError as e:
            errors.append(e)
    rules.sort(key=lambda r: (r.priority, r.name))
    code_limits: dict[str, tuple[RateLimitRule, ...]] = {}
    for rule in rules:
        if rule.matcher.kind == "code":
            code_limits[rule.matcher.pattern] = (*code_limits.get(rule.matcher.pattern, ()), rule)
    breakers = []
    for b in CircuitBreakerPolicy.objects.filter(enabled=True):
        try:
            breakers.append(compile_breaker(b))
        except PolicyError as e:
            errors.append(e)
    bulkheads = []
    for c in ConcurrencyPolicy.objects.filter(enabled=True):
        try:
            bulkheads.append(compile_concurrency(c))
        except PolicyError as e:
            errors.append(e)
    return PolicySet(
        version=version,
        ratelimits=tuple(rule for rule in rules if rule.matcher.kind != "code"),
        breakers=tuple(breakers),
        breakers_by_name={b.name: b for b in breakers},
        code_limits=code_limits,
        errors=tuple(errors),
        concurrency=tuple(bulkheads),
        concurrency_by_name={c.name: c for c in bulkheads},
    )


def user_ids(policies: Iterable[RateLimitPolicy]) -> dict[str, int]:
    """Return the user ids of the usernames that user-keyed policies' overrides name (one query)."""
    from accounts.models import User

    usernames = {
        o.key_value
        for p in policies
        if p.key == RateLimitPolicy.Key.USER and p.match_type != Match.CODE
        for o in p.overrides.all()
        if not o.key_value.isdigit()
    }
    return dict(User.objects.filter(username__in=usernames).values_list("username", "id")) if usernames else {}


@cache
def _unchecked_fields(model: type[Model]) -> tuple[str, ...]:
    """Return the fields compiling leaves alone: all but the bounded numbers and the name.

    Those two are what the engine, the Lua scripts, the headers and the Redis keys rely on; the
    rest (a code breaker's unused pattern left empty by a shell, say) cannot hurt a request.
    """
    return tuple(
        f.name
        for f in model._meta.concrete_fields
        if f.name != "name" and not any(isinstance(v, MinValueValidator | MaxValueValidator) for v in f.validators)
    )


def _field_errors(row: Model) -> str | None:
    """Return what the admin form would say about the row's bounded numbers and name, or None."""
    try:
        row.clean_fields(exclude=list(_unchecked_fields(type(row))))
    except ValidationError as e:
        return "; ".join(f"{name}: {' '.join(messages)}" for name, messages in e.message_dict.items())
    return None


def compile_ratelimit(p: RateLimitPolicy, ids_by_username: dict[str, int] | None = None) -> RateLimitRule:
    """Compile one rate-limit policy (its overrides prefetched); raise PolicyError when it cannot be used."""

    def refuse(reason: str) -> PolicyError:
        return PolicyError(RATELIMIT, p.name, "compile", reason, p.pk)

    problem = _field_errors(p)
    if problem is not None:
        raise refuse(problem)
    overrides: dict[str, int] = {}
    shapes = [("", p.limit, p.burst)]  # (what, limit, burst) of every spec the policy can make
    for o in p.overrides.all():
        problem = _field_errors(o)
        if problem is not None:
            raise refuse(f"override {o.key_value}: {problem}")
        shapes.append((f"override {o.key_value}: ", o.limit, None))
        value = o.key_value
        if p.match_type == Match.CODE and p.key == RateLimitPolicy.Key.USER:
            value = code_key_value(value)  # the username (or other key) as code passes it
        elif p.key == RateLimitPolicy.Key.USER:
            user_id = int(value) if value.isdigit() else (ids_by_username or {}).get(value)
            if user_id is None:
                continue
            value = f"u{user_id}"
        overrides[value] = o.limit
    try:
        algorithm = Algorithm(p.algorithm)
    except ValueError:
        raise refuse(f"algorithm: unknown {p.algorithm!r}") from None
    # The engine's own checks, with the bounds the Lua scripts use: a spec they would refuse or
    # clamp never reaches them.
    for what, limit, burst in shapes:
        try:
            validate([LimitSpec("check", algorithm, limit, p.period, burst)], 1)
        except ValueError as e:
            raise refuse(what + str(e).split(": LimitSpec")[0]) from None
    try:
        matcher = Matcher.build(p.method_set(), p.match_type, p.pattern)
    except PatternError as e:
        raise refuse(f"pattern: {e.reason}") from None
    return RateLimitRule(
        id=p.pk,
        name=p.name,
        priority=p.priority,
        matcher=matcher,
        key=p.key,
        header_meta=header_meta_name(p.header_name) if p.header_name else "",
        algorithm=algorithm,
        limit=p.limit,
        period=p.period,
        burst=p.burst,
        enforce=p.mode == RateLimitPolicy.Mode.ENFORCE,
        exempt_staff=p.exempt_staff,
        fail_open=p.on_store_failure == RateLimitPolicy.OnStoreFailure.ALLOW,
        epoch=p.epoch,
        overrides=overrides,
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
    """Compile one breaker policy; raise PolicyError when it cannot be used."""

    def refuse(reason: str) -> PolicyError:
        return PolicyError(BREAKER, policy.name, "compile", reason, policy.pk)

    problem = _field_errors(policy)
    if problem is not None:
        raise refuse(problem)
    config = breaker_config(policy)
    try:
        config.validate()
        statuses = parse_status_set(policy.failure_statuses)
    except ValueError as e:
        raise refuse(str(e)) from None
    if not statuses:
        raise refuse("failure_statuses: no status")
    try:
        matcher = Matcher.build(policy.method_set(), policy.match_type, policy.pattern)
    except PatternError as e:
        raise refuse(f"pattern: {e.reason}") from None
    return BreakerRule(
        id=policy.pk,
        name=policy.name,
        matcher=matcher,
        config=config,
        failure_statuses=statuses,
        slow_call_seconds=policy.slow_call_ms / 1000 if policy.slow_call_ms else None,
        stale=policy.fallback == CircuitBreakerPolicy.Fallback.STALE,
        stale_max_age=policy.stale_max_age,
    )


def compile_concurrency(policy: ConcurrencyPolicy) -> ConcurrencyRule:
    """Compile one concurrency policy; raise PolicyError when it cannot be used."""

    def refuse(reason: str) -> PolicyError:
        return PolicyError(CONCURRENCY, policy.name, "compile", reason, policy.pk)

    problem = _field_errors(policy)
    if problem is not None:
        raise refuse(problem)
    if policy.key == ConcurrencyPolicy.Key.HEADER and not policy.header_name:
        raise refuse("header_name: a header policy names its header")
    try:
        matcher = Matcher.build(policy.method_set(), policy.match_type, policy.pattern)
    except PatternError as e:
        raise refuse(f"pattern: {e.reason}") from None
    return ConcurrencyRule(
        id=policy.pk,
        name=policy.name,
        matcher=matcher,
        key=policy.key,
        header_meta=header_meta_name(policy.header_name) if policy.header_name else "",
        max_in_flight=policy.max_in_flight,
        max_wait_ms=policy.max_wait_ms,
        lease_seconds=policy.lease_seconds,
        enforce=policy.mode == ConcurrencyPolicy.Mode.ENFORCE,
        fail_open=policy.on_store_failure == ConcurrencyPolicy.OnStoreFailure.ALLOW,
        floor=policy.adaptive_floor,
        target_seconds=policy.adaptive_target_ms / 1000,
    )


def policy_problem(policy: RateLimitPolicy | CircuitBreakerPolicy | ConcurrencyPolicy) -> str | None:
    """Return why a policy row cannot be used as saved (it is skipped everywhere), or None if it can."""
    try:
        if isinstance(policy, RateLimitPolicy):
            compile_ratelimit(policy)
        elif isinstance(policy, ConcurrencyPolicy):
            compile_concurrency(policy)
        else:
            compile_breaker(policy)
    except PolicyError as e:
        return e.reason
    return None
