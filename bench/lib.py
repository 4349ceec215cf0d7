"""What the benchmarks share: database, servers, load clients, machine, results (docs/benchmarks.md.in)."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.live import LiveServer, RedisServer, request

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG = "postgres://postgres@127.0.0.1:5432/"
SCRIPTS = ("evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro")  # Redis commands that run Lua
COLUMNS = "config|req/s|per round|CPU ms/req|mean ms|p50 ms|p99 ms|Redis RT/req|Redis calls/req".split("|")
Request = tuple[str, str, dict[str, str], str]  # method, path, headers, body
WORDS = "river night garden machine city silence winter letters stone memory light shadow kingdom map harbour "
WORDS += "algorithm engine clock signal mirror forest station archive ocean ember voyage library bridge compass"


def knobs(**defaults: float) -> dict[str, Any]:
    """Return each knob: BENCH_<NAME> from the environment (positive), or its default (of its type)."""
    out = {}
    for name, default in defaults.items():
        raw = os.environ.get(f"BENCH_{name.upper()}", "").strip()
        if raw and float(raw) <= 0:
            raise SystemExit(f"BENCH_{name.upper()} must be positive, got {raw!r}")
        out[name] = type(default)(float(raw)) if raw else default
    return out


@contextmanager
def prepared(name: str) -> Iterator[tuple[str, Any]]:
    """Recreate <BENCH_DB>_<name> and migrate it, start a redis-server, point all at both; yield URL and client."""
    import psycopg

    RESULTS.mkdir(parents=True, exist_ok=True)
    # Several people may run benchmarks on one PostgreSQL: BENCH_DB gives each a prefix of their own.
    db = f"{os.environ.get('BENCH_DB') or 'bookstore_bench'}_{name}"
    with psycopg.connect(f"{PG}postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    with RedisServer() as redis_server:
        # Forced, not inherited: a DATABASE_URL left in the shell must never point a benchmark at real data.
        os.environ.update(
            DJANGO_SETTINGS_MODULE="bench.settings", DEBUG="false", LOG_LEVEL="WARNING", ALLOWED_HOSTS="127.0.0.1",
            SECRET_KEY="bench-only-secret-key-not-for-production", DATABASE_URL=f"{PG}{db}", REDIS_URL=redis_server.url,
        )  # fmt: skip
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", interactive=False, verbosity=0)
        yield f"{PG}{db}", redis_server.client()


def customers(count: int, prefix: str = "bench") -> list[str]:
    """Create `count` customers through accounts.services, with no password to hash; return their API tokens."""
    from accounts.services import token_create, user_create

    names = [f"{prefix}{n}" for n in range(count)]
    users = [user_create(username=n, email=f"{n}@bench.invalid", password=None) for n in names]  # type: ignore[arg-type]
    return [token_create(user=user).token for user in users]


def release_db() -> None:
    """Close this process's database connections and pool before the servers take the load."""
    from django.db import connections

    for conn in connections.all():
        conn.close()
        conn.close_pool()


def server(*, workers: int, threads: int, ready: str = "/health/live", **env: str) -> LiveServer:
    """Return gunicorn as deployed, with bench/settings.py, a DB connection a thread and the lean access log."""
    # The stack switches of bench/settings.py are set here, never inherited from the caller's shell.
    env = {"RESILIENCE_MIDDLEWARE": "true", "BENCH_MINIMAL_STACK": "false", "DB_POOL_MIN": str(threads)} | env
    env |= {"DJANGO_SETTINGS_MODULE": "bench.settings", "DB_POOL_MAX": env.get("DB_POOL_MAX", str(threads))}
    logger = ("--logger-class", "bench.accesslog.ServiceTimeLogger")
    return LiveServer(workers=workers, threads=threads, ready_path=ready, args=logger, env_overrides=env)


@contextmanager
def spent(server: LiveServer, redis: Any) -> Iterator[dict[str, Any]]:
    """Yield a dict filled after the block: seconds, server CPU seconds, Redis calls by command, failed ones."""
    began, (cpu, calls, failed), out = time.monotonic(), usage(server, redis), dict[str, Any]()
    yield out
    cpu_after, calls_after, failed_after = usage(server, redis)
    out |= {"cpu_seconds": cpu_after - cpu, "redis_calls": dict(calls_after - calls)}
    out |= {"redis_failed": failed_after - failed, "seconds": time.monotonic() - began}


def usage(server: LiveServer, redis: Any) -> tuple[float, Counter[str], int]:
    """Return gunicorn's CPU seconds so far (master and workers), calls per Redis command and failed calls."""
    ticks = 0
    for pid in [server.proc.pid, *server.worker_pids()] if server.proc else []:
        with suppress(OSError):  # a worker that has just exited
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    stats = redis.info("commandstats")
    calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"})
    failed = sum(int(v.get("failed_calls", 0)) + int(v.get("rejected_calls", 0)) for v in stats.values())
    return ticks / os.sysconf("SC_CLK_TCK"), calls, failed


def per_request(out: dict[str, Any], requests: int) -> dict[str, Any]:
    """Return server CPU ms, Redis round trips (script calls) and Redis commands per request of a spent() block."""
    n, calls = max(requests, 1), out["redis_calls"]
    per = {"cpu_ms": round(1000 * out["cpu_seconds"] / n, 3), "redis_calls": round(sum(calls.values()) / n, 3)}
    per["redis_rt"] = round(sum(calls.get(s, 0) for s in SCRIPTS) / n, 3)
    return per | {"by_command": {k: round(v / n, 3) for k, v in sorted(calls.items())}}


def wrk_round(server: LiveServer, redis: Any, mix: Sequence[Request], cfg: dict[str, Any]) -> dict[str, Any]:
    """Warm up with wrk for cfg's warmup, then measure cfg's duration; return wrk's figures and per_request()'s."""
    with tempfile.NamedTemporaryFile("w", suffix=".requests") as f:
        f.writelines("\t".join([m, p, b, *(f"{k}: {v}" for k, v in h.items())]) + "\n" for m, p, h, b in mix)
        f.flush()
        for seconds in (cfg["warmup"], cfg["duration"]):  # the last run's figures are the round's
            cmd = ["wrk", "-t1", f"-c{cfg['clients']}", f"-d{max(1, round(seconds))}s", "--timeout", "15s",
                   "-s", str(ROOT / "bench" / "wrk.lua"), server.url, "--", f.name]  # fmt: skip
            with spent(server, redis) as out:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
            if (line := next((x for x in proc.stdout.splitlines() if x.startswith("JSON ")), None)) is None:
                raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    r = json.loads(line[5:])
    r |= {k.removesuffix("_us") + "_ms": round(v / 1000, 2) for k, v in r.items() if k.endswith("_us")}
    return r | {"per_second": round(r["requests"] / (r["duration_us"] / 1e6), 1)} | per_request(out, r["requests"])


def child(module: str, spec: dict[str, Any], timeout: float) -> Any:
    """Run `python -m module` in a process of its own, the spec as JSON on its stdin; return the JSON it prints."""
    proc = subprocess.run([sys.executable, "-m", module], cwd=ROOT, input=json.dumps(spec),
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"{module} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)


def load(server: LiveServer, clients: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """Run bench/client.py's closed loop, one connection per client; return its report."""
    spec = {"host": "127.0.0.1", "port": server.port, "clients": clients, **spec}
    return child("bench.client", spec, timeout=spec.get("warmup", 0) + spec.get("duration", 600) + 120)


def alternate(labels: Sequence[str], rounds: int) -> Iterator[str]:
    """Yield the labels round after round, every other round reversed, so drift in load falls on all alike."""
    for n in range(rounds):
        yield from (labels if n % 2 == 0 else reversed(labels))


def summarise(labels: dict[str, str], runs: dict[str, list[dict[str, Any]]]) -> tuple[list[Any], list[Any]]:
    """Return each config's means over its rounds (medians of the percentiles), and their table rows (COLUMNS)."""
    means = ("per_second", "cpu_ms", "mean_ms", "redis_rt", "redis_calls")
    s = {k: {f: mean(r[f] for r in rs) for f in means} for k, rs in runs.items()}
    for k, rs in runs.items():
        s[k] |= {f: round(statistics.median(r[f] for r in rs), 2) for f in ("p50_ms", "p99_ms")}
    rounds = {k: " ".join(f"{r['per_second']:.0f}" for r in rs) for k, rs in runs.items()}
    fields = ("cpu_ms", "mean_ms", "p50_ms", "p99_ms", "redis_rt", "redis_calls")
    return list(s.values()), [[labels[k], x["per_second"], rounds[k], *(x[f] for f in fields)] for k, x in s.items()]


def mean(values: Iterable[float], digits: int = 3) -> float:
    return round(statistics.fmean(values), digits)


def ratio(x: float, y: float) -> float:
    return round(x / y, 3) if y else 0.0


def ratios(xs: list[dict[str, Any]], ys: list[dict[str, Any]]) -> str:
    """Return requests/s of rounds xs over rounds ys: of the means, then of each round."""
    each = " ".join(str(ratio(x["per_second"], y["per_second"])) for x, y in zip(xs, ys, strict=True))
    return f"{ratio(mean(x['per_second'] for x in xs), mean(y['per_second'] for y in ys))} (rounds: {each})"


def percentile(values: Iterable[float], q: float) -> float:
    """Return the nearest-rank q-th percentile (0 < q <= 100), 0.0 if there are none."""
    ordered = sorted(values)
    return ordered[min(max(math.ceil(q / 100 * len(ordered)), 1), len(ordered)) - 1] if ordered else 0.0


def machine(redis: Any) -> dict[str, Any]:
    """Return what the figures depend on (machine, load, speed, versions); close this process's DB connections."""
    import django
    import gunicorn
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        pg, sync = (conn.execute(f"SHOW {x}").fetchone()[0] for x in ("server_version", "synchronous_commit"))
    cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    release_db()
    # The best of three timings of a fixed pure-Python loop: how fast this VM runs right now.
    probe = min(timeit.repeat("sum(i * i for i in range(1_000_000))", timer=time.process_time, number=1, repeat=3))
    return {
        "nproc": os.cpu_count(), "cpu": cpu.group(1) if cpu else "?",
        "ram_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "cpu_probe_ms": round(probe * 1000, 1),
        "os": platform.platform(terse=True), "python": platform.python_version(), "django": django.get_version(),
        "postgresql": pg.split()[0], "synchronous_commit": sync, "redis": redis.info("server")["redis_version"],
        "gunicorn": gunicorn.__version__,
    }  # fmt: skip


def metrics(port: int, *prefixes: str) -> dict[str, float]:
    """Return the series of /metrics whose names start with one of the prefixes, summed over the workers."""
    lines = [x.rpartition(" ") for x in request(port, "/metrics").body.decode().splitlines() if x.startswith(prefixes)]
    return {name: sum(float(v) for n, _, v in lines if n == name) for name in dict.fromkeys(n for n, _, _ in lines)}


def listing(counts: dict[str, Any]) -> str:
    """Return "name value, name value, ..."."""
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def check(name: str, ok: Any, measured: Any, limit: Any = "", **figures: Any) -> dict[str, Any]:
    """Return a named check: whether it held, what was measured, what it was judged against, and more figures."""
    return {"name": name, "ok": bool(ok), "measured": str(measured), "limit": str(limit), "figures": figures}


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Return a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows])


def render(results: dict[str, Any]) -> str:
    """Return a benchmark's results as Markdown: its table, its figures and its checks."""
    parts = [table(results["columns"], results["rows"])] if results.get("rows") else []
    parts += [table(["figure", "value"], results["figures"])] if results.get("figures") else []
    checks = [("PASS" if c["ok"] else "**FAIL**", c["name"], c["measured"], c["limit"]) for c in results["checks"]]
    return "\n\n".join([*parts, table(["", "check", "measured", "limit"], checks)])


def finish(name: str, **results: Any) -> int:
    """Print the results, write bench/results/<name>.json; return 0 if every check held."""
    ok = all(c["ok"] for c in results["checks"])
    results = {"benchmark": name, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), **results, "ok": ok}
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(render(results), f"\nresults: bench/results/{name}.json", sep="\n", flush=True)
    return 0 if ok else 1
