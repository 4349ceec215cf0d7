"""Prometheus metrics of the resilience layer, registered in django-prometheus's registry.

Label sets are bounded: policy names come from the admin (a handful), outcomes from a fixed list.
Under gunicorn with PROMETHEUS_MULTIPROC_DIR set, prometheus_client writes per-process files that
the /metrics view sums, so counters are correct across workers.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

CONCURRENCY_OUTCOMES = (
    "admitted",
    "admitted_after_wait",
    "refused",
    "refused_after_wait",
    "dry_run_would_refuse",
    "store_error",
    "lease_expired",  # on release: the call outlived its lease, so another was let in meanwhile
)

# Slots held now, summed over the live processes (a killed worker's slots leave the sum with it;
# in Redis they last until their lease expires).
concurrency_in_flight = Gauge(
    "bookstore_concurrency_in_flight",
    "Requests or code blocks holding a concurrency-policy slot now, by policy.",
    ["policy"],
    multiprocess_mode="livesum",
)
# An adaptive policy's limit as this process last read it (every live worker reads the fleet's).
concurrency_limit = Gauge(
    "bookstore_concurrency_limit",
    "The slots an adaptive concurrency policy hands out now, by policy.",
    ["policy"],
    multiprocess_mode="livemax",
)
concurrency_decisions = Counter(
    "bookstore_concurrency_decisions",
    "Concurrency-policy (bulkhead) decisions by policy and outcome.",
    ["policy", "outcome"],
)
concurrency_wait_seconds = Histogram(
    "bookstore_concurrency_wait_seconds",
    "How long requests that found every slot taken waited, admitted or not, by policy.",
    ["policy"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
