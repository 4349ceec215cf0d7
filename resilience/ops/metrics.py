"""Prometheus metrics of the resilience layer, registered in django-prometheus's registry.

Label sets are bounded: policy names come from the admin (a handful), outcomes from a fixed list.
Under gunicorn with PROMETHEUS_MULTIPROC_DIR set, prometheus_client writes per-process files that
the /metrics view sums, so counters are correct across workers.
"""

from __future__ import annotations

from prometheus_client import Counter

RATELIMIT_OUTCOMES = ("allowed", "limited", "dry_run_would_limit", "store_error")

ratelimit_decisions = Counter(
    "bookstore_ratelimit_decisions",
    "Rate-limit decisions by policy and outcome.",
    ["policy", "outcome"],
)
store_errors = Counter(
    "bookstore_resilience_store_errors",
    "Failed calls to the shared resilience store (Redis), by operation.",
    ["operation"],
)
breaker_transitions = Counter(
    "bookstore_breaker_transitions",
    "Circuit-breaker state transitions.",
    ["breaker", "from_state", "to_state"],
)
breaker_rejections = Counter(
    "bookstore_breaker_rejections",
    "Calls a circuit breaker refused (open, or half-open with no trial slot left).",
    ["breaker"],
)
policy_errors = Counter(
    "bookstore_resilience_policy_errors",
    "Policies left out because they could not be compiled (stage=compile, every reload) or decided for a "
    "request (stage=match, admit, record, stale), by policy and stage.",
    ["policy", "stage"],
)
