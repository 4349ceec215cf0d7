"""gunicorn settings for bookstore: `gunicorn -c deploy/gunicorn.conf.py bookstore.wsgi`.

Every value can be overridden by the environment (GUNICORN_WORKERS, GUNICORN_BIND, ...).
Prometheus multiprocess mode: each worker writes its metrics to PROMETHEUS_MULTIPROC_DIR and the
/metrics view sums them; a dead worker's live gauges are marked so they stop counting.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import tempfile

# Loopback: nginx (deploy/nginx/) is the only client. gunicorn is not an edge server: it has no
# header or body timeouts worth the name, and a client that sends half a request holds a thread.
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Two processes per core: a request's Python work holds its worker's GIL, so one process per core
# is the least that keeps every core busy, and a second covers a worker stalled in a long hash
# or a collection. This 2 x cores x 4 threads shape is the one docs/benchmarks.md measures.
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2))
# gthread: each worker's threads overlap their waits on PostgreSQL and Redis, and idle keep-alive
# connections (nginx keeps a few open per worker, deploy/nginx/) wait in a poller instead of
# holding a thread, as they would in a sync worker. Four threads stay within DB_POOL_MAX (8), so
# no thread waits for a database connection.
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
# The longest request line and header field nginx passes on (large_client_header_buffers 8k), so
# that nginx, not gunicorn's plain-text 400, answers anything longer (with problem+json).
limit_request_line = 8190
limit_request_field_size = 8190
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# How long a thread may hold the GIL while another wants it (ms; Python's default is 5). With several
# threads per worker, a cheap request (a 429, an open breaker's 503) otherwise waits up to one
# interval per busy sibling thread after each I/O; 1 ms bounds that wait for a negligible cost.
switch_interval_ms = float(os.environ.get("GUNICORN_SWITCH_INTERVAL_MS", "1"))

# Without a multiprocess folder each worker would count alone and /metrics would report whichever
# worker answered the scrape. Workers import prometheus_client after they fork, so setting the
# variable here, in the master, is early enough.
if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bookstore-metrics-")


def on_starting(server: object) -> None:
    """Empty the multiprocess metrics folder: files from an earlier run would be summed in."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))


def pre_fork(server: object, worker: object) -> None:
    """With --preload: move the loaded app's objects out of the garbage collector's sight before forking.

    A full collection otherwise walks every object Django, DRF and the app created at import,
    holding the GIL for tens of milliseconds and stalling every thread of the worker; frozen
    objects are never scanned (and their pages stay shared between workers).
    """
    gc.freeze()


def post_fork(server: object, worker: object) -> None:
    """Set the worker's GIL switch interval (see switch_interval_ms)."""
    sys.setswitchinterval(switch_interval_ms / 1000)


def post_worker_init(worker: object) -> None:
    """Without --preload the worker loads the app itself: freeze what that created (see pre_fork)."""
    gc.freeze()


def child_exit(server: object, worker: object) -> None:
    """Mark a dead worker so its live gauges stop being reported."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]  # a gunicorn Worker
