"""Helpers shared by the benchmarks: environment, the bench database, gunicorn, the load generator.

Everything runs on loopback against services the test suite also uses: PostgreSQL on
127.0.0.1:5432 (database bookstore_bench, or $BENCH_DB, dropped and recreated by each run) and Redis
on 127.0.0.1:6379 (DB 14, flushed by each run, unless a benchmark brings its own redis-server).
Processes started here are stopped by PID.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PYTHON = sys.executable

PG_SERVER_URL = "postgres://postgres@127.0.0.1:5432/"
# Several people may run benchmarks on one PostgreSQL: each can name a database of their own.
BENCH_DB = os.environ.get("BENCH_DB", "bookstore_bench")
DATABASE_URL = f"{PG_SERVER_URL}{BENCH_DB}"
REDIS_URL = "redis://127.0.0.1:6379/14"
HOST = "127.0.0.1"


def bench_env(**overrides: str) -> dict[str, str]:
    """Return the environment for the bench process and the servers it starts.

    The app's variables are forced, not inherited: a DATABASE_URL left in the caller's shell
    must never point a benchmark at a real database.
    """
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="bookstore.settings",
        DEBUG="false",
        SECRET_KEY="bench-only-secret-key-not-for-production",
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        ALLOWED_HOSTS=HOST,
        RESILIENCE_KEY_PREFIX="bench:",
        CACHE_KEY_PREFIX="bench",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(overrides)
    return env


def env_number(name: str, default: float) -> float:
    """Return a positive number from the environment (BENCH_* knobs), or default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = float(raw)
    if value <= 0:
        raise SystemExit(f"{name} must be positive, got {raw!r}")
    return value


# --- Database and Redis ------------------------------------------------------------------------


def setup_django(**env_overrides: str) -> None:
    """Point this process at the bench database and Redis, recreate both, migrate, set Django up."""
    os.environ.update(bench_env(**env_overrides))
    sys.path.insert(0, str(ROOT))
    _recreate_database()
    _flush_redis(os.environ["REDIS_URL"])

    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    # Bench accounts only ever use tokens; the production hasher would spend ~0.3 s per account.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    call_command("migrate", interactive=False, verbosity=0)


def _recreate_database() -> None:
    import psycopg

    with psycopg.connect(f"{PG_SERVER_URL}postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


def _flush_redis(url: str) -> None:
    """Empty the Redis database this run uses (a benchmark's private server, or DB 14)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def close_django_connections() -> None:
    """Return this process's connections (and close its pool) before others take the load."""
    from django.db import connections

    for conn in connections.all():
        conn.close()
        close_pool = getattr(conn, "close_pool", None)
        if close_pool is not None:
            close_pool()


def vacuum(*tables: str) -> None:
    """VACUUM ANALYZE tables so each measured phase starts without the last one's dead rows."""
    import psycopg

    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        for table in tables:
            conn.execute(f'VACUUM ANALYZE "{table}"')


# --- Machine -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Return what the figures depend on: CPUs, Python, PostgreSQL, gunicorn."""
    import gunicorn
    import psycopg

    with psycopg.connect(DATABASE_URL) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg_version = row[0] if row else "?"
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    return {
        "nproc": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "postgresql": pg_version.split()[0],
        "synchronous_commit": sync[0] if sync else "?",
        "gunicorn": gunicorn.__version__,
        "platform": platform.platform(terse=True),
    }


# --- gunicorn ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    pid: int
    workers: int
    threads: int
    log: Path


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def server_cpu_seconds(server: Server) -> float:
    """Return the CPU time (user + system) the gunicorn master and its workers have used so far."""
    ticks = 0
    for pid in [server.pid, *_children(server.pid)]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": field 3 onwards
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _answers(host: str, port: int, path: str) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


@contextmanager
def gunicorn(
    *,
    workers: int,
    threads: int,
    env: dict[str, str],
    log: Path,
    app: str = "bookstore.wsgi",
    probe_path: str = "/api/accounts/me",
    boot_timeout: float = 30.0,
) -> Iterator[Server]:
    """Run gunicorn with the deployment's config on a free loopback port; yield once every worker answers.

    deploy/gunicorn.conf.py supplies what production runs with (hooks, GIL switch interval); the
    flags here set the size and the socket.

    The listening socket is bound here and handed over as fd://, so no other process can take
    the port between choosing it and listening on it. --preload loads Django once in the master:
    workers fork ready to serve, so the first keep-alive connections do not all pile onto the
    one worker that happened to boot first.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    cmd = [
        PYTHON, "-m", "gunicorn", app,
        "--config", str(ROOT / "deploy" / "gunicorn.conf.py"),  # as deployed; the flags below win
        "--bind", f"fd://{listener.fileno()}",
        "--workers", str(workers),
        "--worker-class", "gthread" if threads > 1 else "sync",
        "--threads", str(threads),
        "--preload",
        "--keep-alive", "5",
        "--timeout", "60",
        "--log-level", "warning",
        "--error-logfile", "-",
    ]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
            start_new_session=True,  # ^C in the terminal reaches us, and we stop it in order
        )
    listener.close()  # gunicorn holds its own copy
    try:
        deadline = time.monotonic() + boot_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{_tail(log)}")
            if len(_children(proc.pid)) >= workers and _answers(HOST, port, probe_path):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer within {boot_timeout:.0f} s:\n{_tail(log)}")
            time.sleep(0.05)
        yield Server(HOST, port, proc.pid, workers, threads, log)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Stop a process we started: SIGTERM, then SIGKILL after grace seconds, by its PID only.

    A gunicorn master answers SIGTERM by stopping its workers and waiting for them.
    """
    if proc.poll() is not None:
        return
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # A master killed before it reaped its workers leaves them orphaned; they are ours too.
    for pid in workers:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- Load generator ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One client's request, sent again and again on its own keep-alive connection."""

    method: str
    path: str
    headers: dict[str, str]
    body: str = ""


def run_load(
    server: Server,
    requests: Sequence[Request],
    *,
    warmup: float,
    duration: float,
    max_requests: int,
    timeout: float = 15.0,
    generator: Sequence[str] = ("bench.loadgen",),
) -> dict[str, Any]:
    """Drive the server from a separate process (bench/loadgen.py), one client per request given.

    Return the generator's JSON report: statuses, errors, and throughput and latency over the
    measured window (after warm-up). generator names the module (and arguments) to run with
    `python -m` when a benchmark needs a generator that records more.
    """
    spec = {
        "host": server.host,
        "port": server.port,
        "warmup": warmup,
        "duration": duration,
        "max_requests": max_requests,
        "timeout": timeout,
        "clients": [r.__dict__ for r in requests],
    }
    proc = subprocess.Popen(
        [PYTHON, "-m", *generator],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(json.dumps(spec), timeout=warmup + duration + timeout + 30)
    finally:
        stop_process(proc, grace=2)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{err}")
    return json.loads(out)


# --- Reporting ---------------------------------------------------------------------------------


def redis_command_calls(client: Any) -> dict[str, int]:
    """Return calls per Redis command (INFO commandstats), the INFO call that reads them excluded."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items() if name != "cmdstat_info"
    }


def script_calls(calls: dict[str, int]) -> int:
    """Return how many Lua scripts those calls ran (EVALSHA, or EVAL after a script cache flush)."""
    return calls.get("evalsha", 0) + calls.get("eval", 0)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the nearest-rank q-th percentile (0 < q <= 100) of ascending values, 0.0 if empty."""
    if not sorted_values:
        return 0.0
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write results as bench/results/<name>.json and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path
