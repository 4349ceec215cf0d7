"""Run the app under real gunicorn, and a private Redis, for tests that need real processes.

Everything binds to loopback and is stopped by PID (a process group we created), never by name.
The gunicorn servers talk to the pytest-django test database and the test run's Redis key space,
so data a test commits (``transactional_db``) is what every worker sees.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
HOST = "127.0.0.1"
# A request the app answers without any rate-limit policy a test creates (tests match exact paths).
READY_PATH = "/api/books"
# Each access-log line: worker pid, status, method, path, and the X-Probe request header.
ACCESS_LOG_FORMAT = "%(p)s %(s)s %(m)s %(U)s %({x-probe}i)s"


def with_live_password(user: Any, password: str = "correct-horse-battery") -> Any:
    """Give a user a password the servers can check, and save it; return the user.

    The servers run production settings, whose hashers do not include the tests' fast one.
    """
    from django.contrib.auth.hashers import Argon2PasswordHasher

    hasher = Argon2PasswordHasher()
    user.password = hasher.encode(password, hasher.salt())
    user.save(update_fields=["password"])
    return user


def free_port() -> int:
    """Return a loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """Return a postgres:// URL for the database Django uses now (the test database in tests)."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith(".postgresql"):  # django.db.backends or django_prometheus.db.backends
        raise RuntimeError("live servers need PostgreSQL: another process cannot share an SQLite test DB")
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or HOST
    port = db.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{quote(db['NAME'], safe='')}"


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group we started, then SIGKILL it after grace seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Workers orphaned by a master that died first are still in the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# --- HTTP ----------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One HTTP exchange as a test sees it."""

    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    seconds: float  # from connecting to the last byte of the body
    port: int = 0

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str | None = None,
    timeout: float = 10.0,
) -> Reply:
    """Send one request on a fresh connection (Connection: close), optionally from a loopback source IP.

    Binding the client socket to 127.0.0.N gives the server a distinct REMOTE_ADDR per simulated
    client: the whole 127.0.0.0/8 range is loopback on Linux.
    """
    began = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout, source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        return Reply(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=body,
            seconds=time.perf_counter() - began,
            port=port,
        )
    finally:
        conn.close()


# --- gunicorn ------------------------------------------------------------------------------------


@dataclass
class LiveServer:
    """Run ``gunicorn -c deploy/gunicorn.conf.py bookstore.wsgi`` on a free loopback port.

    Use as a context manager or call start() and stop(); stop() is safe to call twice.
    """

    workers: int = 4
    # Threads per gthread worker; None keeps deploy/gunicorn.conf.py's. For sync workers, which close
    # the connection after each response, set GUNICORN_WORKER_CLASS=sync in env_overrides.
    threads: int | None = None
    env_overrides: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    # Load Django once in the master and fork ready workers: boots several times faster on a
    # small machine. Workers still build their runtime, Redis and DB connections after the fork.
    preload: bool = True
    boot_timeout: float = 40.0
    # Where readiness is polled; "/health/live" lets a server boot with a dead database.
    ready_path: str = READY_PATH
    # More gunicorn flags, e.g. ("--logger-class", "bench.accesslog.ServiceTimeLogger"). A logger
    # class must start each access line with the worker's <pid>, as ACCESS_LOG_FORMAT does.
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    tmp: Path | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def access_log(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "access.log"

    @property
    def error_log(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "stderr.log"

    def environment(self) -> dict[str, str]:
        from django.conf import settings

        assert self.tmp is not None
        metrics_dir = self.tmp / "metrics"
        metrics_dir.mkdir(exist_ok=True)
        # Several servers run at once: none may take the shared default control socket.
        args = f"--access-logformat {shlex.quote(ACCESS_LOG_FORMAT)} --no-control-socket"
        if self.preload:
            args += " --preload"
        if self.args:
            args += " " + shlex.join(self.args)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_", "GUNICORN_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="bookstore.settings",
            DEBUG="false",
            SECRET_KEY="live-test-secret-key-not-for-production",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            DATABASE_URL=database_url(),
            REDIS_URL=settings.REDIS_URL,
            RESILIENCE_KEY_PREFIX=settings.RESILIENCE_KEY_PREFIX,
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
            GUNICORN_BIND=f"{HOST}:{self.port}",
            GUNICORN_WORKERS=str(self.workers),
            GUNICORN_ACCESSLOG=str(self.access_log),
            GUNICORN_CMD_ARGS=args,
            LOG_LEVEL="WARNING",
            PYTHONPATH=str(ROOT),
        )
        if self.threads is not None:
            env["GUNICORN_THREADS"] = str(self.threads)
        env.update(self.env_overrides)
        if env["DATABASE_URL"] != database_url() and "RESILIENCE_KEY_PREFIX" not in self.env_overrides:
            # A server on another database (or behind a proxy a test cuts) guards another database:
            # its database breaker must not refuse this process, which keeps using the test database.
            env["RESILIENCE_KEY_PREFIX"] = f"{settings.RESILIENCE_KEY_PREFIX}{self.port}:"
        return env

    def start(self) -> LiveServer:
        """Start gunicorn and return once every worker has served a request."""
        if self.proc is not None:
            raise RuntimeError("already started")
        self.port = self.port or free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="live-gunicorn-"))
        with self.error_log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [str(GUNICORN), "-c", "deploy/gunicorn.conf.py", "bookstore.wsgi"],
                cwd=ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # its own process group, stopped as one
            )
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def _fail(self, why: str) -> None:
        raise RuntimeError(f"gunicorn on port {self.port} {why}:\n{self.stderr_tail()}")

    def _wait_until_serving(self) -> None:
        """Poll ready_path until it answers, then until each worker has answered one request.

        One answering worker is not yet a full pool (without --preload each loads Django after
        the fork), and tests that reason per worker need every worker serving.
        """
        assert self.proc is not None
        deadline = time.monotonic() + self.boot_timeout
        while True:
            if self.proc.poll() is not None:
                self._fail(f"exited with status {self.proc.returncode}")
            try:
                if request(self.port, self.ready_path, timeout=2).status < 500:  # type: ignore[arg-type]  # started: the port is known
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._fail(f"did not answer within {self.boot_timeout:.0f} s")
            time.sleep(0.05)
        while len(self.served_pids() & set(self.worker_pids())) < self.workers:
            if self.proc.poll() is not None:
                self._fail(f"exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"did not have {self.workers} serving workers within {self.boot_timeout:.0f} s")
            self._burst(self.ready_path, self.workers * 2)

    def _burst(self, path: str, count: int) -> None:
        threads = [threading.Thread(target=self._quiet_request, args=(path,), daemon=True) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _quiet_request(self, path: str) -> None:
        with contextlib.suppress(OSError):
            request(self.port, path, timeout=5)  # type: ignore[arg-type]  # started: the port is known

    def worker_pids(self) -> list[int]:
        """Return the PIDs of the master's live worker processes."""
        return _children(self.proc.pid) if self.proc is not None else []

    def access_lines(self) -> list[list[str]]:
        """Return the access log, one split line per request (pid, status, method, path, probe)."""
        try:
            text = self.access_log.read_text(errors="replace")
        except OSError:
            return []
        return [line.split(" ") for line in text.splitlines() if line]

    def served_pids(self, probe: str | None = None) -> set[int]:
        """Return the worker PIDs that served requests (with this X-Probe header value, if given)."""
        pids = set()
        for fields in self.access_lines():
            pid = fields[0].strip("<>")  # gunicorn writes %(p)s as <pid>
            if pid.isdigit() and (probe is None or fields[-1] == probe):
                pids.add(int(pid))
        return pids

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        """Stop gunicorn by its process group: SIGTERM, then SIGKILL after grace seconds."""
        if self.proc is not None:
            _stop_group(self.proc, grace)
            self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- Redis ---------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A private, throwaway redis-server on a loopback port, for fault tests.

    stop() ends it (losing every key, as a crashed cache would); start() brings a fresh one up on
    the same port, so clients configured with its URL reconnect without being told.
    """

    port: int = 0
    boot_timeout: float = 10.0
    # More redis-server options, e.g. ("--cluster-enabled", "yes"), or ("--rename-command", "EVALSHA", "")
    # for a Redis that refuses scripts.
    args: tuple[str, ...] = ()
    # A configuration file's text, written to its directory and given first (a sentinel needs a
    # file it can rewrite: RedisServer(conf="sentinel monitor ...", args=("--sentinel",))).
    conf: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    tmp: Path | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> RedisServer:
        if self.proc is not None:
            raise RuntimeError("already started")
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed")
        self.port = self.port or free_port()
        self.tmp = self.tmp or Path(tempfile.mkdtemp(prefix="live-redis-"))
        conf = []
        if self.conf:
            (self.tmp / "redis.conf").write_text(self.conf)
            conf = [str(self.tmp / "redis.conf")]
        # stdout to a file, not a pipe: a full pipe nobody reads would stall the server.
        with (self.tmp / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [executable, *conf, "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no",
                 "--dir", str(self.tmp), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + self.boot_timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_text = (self.tmp / "redis.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log_text}")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client(self, **kwargs: Any) -> Any:
        import redis

        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, **kwargs)

    def keys(self, pattern: str) -> list[str]:
        client = self.client(decode_responses=True)
        try:
            return list(client.scan_iter(match=pattern, count=1000))
        finally:
            client.close()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but answers nothing, like a hung host."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT); it answers what queued up meanwhile."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server by PID; its port refuses connections until start()."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            _stop_group(self.proc, grace)
            self.proc = None

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- A Redis Cluster on loopback ---------------------------------------------------------------------


@dataclass
class LocalRedisCluster:
    """Six redis-servers on loopback made one Redis Cluster: three masters, each with a replica."""

    masters: int = 3
    boot_timeout: float = 30.0
    servers: list[RedisServer] = field(default_factory=list, init=False, repr=False)

    @property
    def nodes(self) -> str:
        """Return REDIS_CLUSTER_NODES for it: every node's host:port, comma-separated."""
        return ",".join(f"{HOST}:{server.port}" for server in self.servers)

    def start(self) -> LocalRedisCluster:
        try:
            for _ in range(self.masters * 2):
                # The bus port on a free port of its own: the default, port + 10000, may be past 65535.
                args = (
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    str(free_port()),
                )
                self.servers.append(RedisServer(args=args).start())
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"{HOST}:{s.port}" for s in self.servers),
                 "--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            self._wait_until_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_until_ready(self) -> None:
        """Wait until every node says the cluster is ok and knows the same masters."""
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            views = []
            for server in self.servers:
                client = server.client(decode_responses=True)
                try:
                    info = client.execute_command("CLUSTER", "INFO")
                    masters = sorted(
                        line.split()[1] for line in client.execute_command("CLUSTER", "NODES").splitlines()
                        if "master" in line.split()[2] and "fail" not in line.split()[2]
                    )  # fmt: skip
                    views.append(("cluster_state:ok" in info, tuple(masters)))
                finally:
                    client.close()
            agreed = {masters for _, masters in views}
            if all(ok for ok, _ in views) and len(agreed) == 1 and len(views[0][1]) == self.masters:
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ready")

    def client(self, **kwargs: Any) -> Any:
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(HOST, s.port) for s in self.servers], socket_timeout=2, **kwargs)

    def close(self) -> None:
        stop_all(self.servers)
        self.servers.clear()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- A connection pooler in front of PostgreSQL -----------------------------------------------------


@dataclass
class PgBouncer:
    """A private PgBouncer (Debian's package) in transaction mode on a loopback port, before the test PostgreSQL.

    ``connect_query`` runs on every server connection it opens, as a deployment sets the statement
    timeout there. It runs as the ``postgres`` user when started by root (PgBouncer refuses root).
    """

    pool_size: int = 2
    connect_query: str = ""
    # More [pgbouncer] settings (a deployment's file): they replace the defaults below, but never
    # the loopback address, the authentication or the log file.
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    tmp: Path | None = field(default=None, init=False, repr=False)

    def url(self, database_url: str) -> str:
        """Return ``database_url`` with its host and port replaced by this pooler's."""
        parsed = urlsplit(database_url)
        user = f"{parsed.username}@" if parsed.username else ""
        return urlunsplit(parsed._replace(netloc=f"{user}{HOST}:{self.port}"))

    def start(self) -> PgBouncer:
        executable = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(executable).exists():
            raise RuntimeError("pgbouncer is not installed (Debian package pgbouncer)")
        self.port = self.port or free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="live-pgbouncer-"))
        target = urlsplit(database_url())
        query = f" connect_query='{self.connect_query}'" if self.connect_query else ""
        (self.tmp / "users.txt").write_text(f'"{target.username or "postgres"}" ""\n')
        values = {
            "pool_mode": "transaction",
            "default_pool_size": str(self.pool_size),
            "max_client_conn": "200",
            **self.settings,
            "listen_addr": HOST,
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.tmp / "users.txt"),
            "logfile": str(self.tmp / "pgbouncer.log"),
        }
        (self.tmp / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={target.hostname or HOST} port={target.port or 5432}{query}\n"
            "[pgbouncer]\n" + "".join(f"{name} = {value}\n" for name, value in values.items())
        )
        command = [executable, str(self.tmp / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres")
            for child in self.tmp.iterdir():
                shutil.chown(child, "postgres")
            command[1:1] = ["-u", "postgres"]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.tmp / "pgbouncer.log").read_text(errors="replace") if self.tmp else ""
                    self.close()
                    raise RuntimeError(f"pgbouncer on port {self.port} did not start:\n{log}") from None
                time.sleep(0.02)

    def log(self) -> str:
        assert self.tmp is not None
        return (self.tmp / "pgbouncer.log").read_text(errors="replace")

    def close(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, 5.0)
            self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- A dependency that goes away -------------------------------------------------------------------


class TcpProxy:
    """Relay a loopback port to a TCP server, and take that server away on demand.

    Put it between the app and PostgreSQL (which other engineers share, so it is never stopped
    itself) and point DATABASE_URL at ``proxy.port``:

    - relaying (the start state, and after restore()): every connection reaches the server;
    - refuse(): open connections are cut and new ones refused, as when the server process dies;
    - hang(): new connections are accepted and never answered, and open ones stop relaying, as
      with a frozen host;
    - restore(): relay again; the connections refuse() or hang() left are cut first.

    The relay runs an asyncio loop in one daemon thread; each method returns once the change is
    in force.
    """

    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = "stopped"
        self._loop: Any = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._relaying: Any = None  # asyncio.Event: set while data may flow
        self._writers: set[Any] = set()  # every open stream, client side and server side
        self._tasks: set[Any] = set()  # one per relayed connection
        self.accepted = 0  # connections accepted so far (what a refusing proxy refuses is not counted)

    def start(self) -> TcpProxy:
        import asyncio

        if self._thread is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._call(self._start())
        return self

    def url(self, url: str) -> str:
        """Return ``url`` with its host and port replaced by the proxy's."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{auth}@{HOST}:{self.port}" if auth else f"{HOST}:{self.port}"))

    def refuse(self) -> None:
        """Cut every open connection and refuse new ones."""
        self._call(self._refuse())

    def hang(self) -> None:
        """Accept new connections and never answer them; stop relaying on open ones."""
        self._call(self._set_mode("hang"))

    def restore(self) -> None:
        """Relay again, after cutting what the outage left open."""
        self._call(self._restore())

    def stop(self) -> None:
        """Cut everything, stop listening and end the thread; safe to call twice."""
        if self._thread is None:
            return
        self._call(self._refuse())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        self._thread = None
        self.mode = "stopped"

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- inside the loop ---------------------------------------------------------------------------
    def _call(self, coroutine: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _start(self) -> None:
        import asyncio

        self._relaying = asyncio.Event()
        await self._listen()

    async def _listen(self) -> None:
        import asyncio

        self._server = await asyncio.start_server(self._accepted, HOST, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        await self._set_mode("relaying")

    async def _set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "relaying":
            self._relaying.set()
        else:
            self._relaying.clear()

    async def _refuse(self) -> None:
        await self._set_mode("refusing")
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._cut()

    async def _restore(self) -> None:
        await self._cut()
        if self._server is None:
            await self._listen()
        else:
            await self._set_mode("relaying")

    async def _cut(self) -> None:
        import asyncio

        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accepted(self, reader: Any, writer: Any) -> None:
        import asyncio

        self.accepted += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        up_writer = None
        try:
            if self.mode == "hang":
                await reader.read()  # held, unanswered, until the client gives up or it is cut
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for each in (writer, up_writer):
                if each is not None:
                    each.transport.abort()
                    self._writers.discard(each)
            self._tasks.discard(task)

    async def _pump(self, source: Any, sink: Any) -> None:
        while data := await source.read(65536):
            await self._relaying.wait()  # hang(): what arrives is held back
            sink.write(data)
            await sink.drain()
        sink.transport.abort()  # one side hung up: so does the other


def stop_all(servers: Iterable[LiveServer | RedisServer]) -> None:
    """Stop every server, even if stopping one fails."""
    errors = []
    for server in servers:
        try:
            if isinstance(server, RedisServer):
                server.close()
            else:
                server.stop()
        except Exception as e:  # noqa: BLE001 - keep stopping the others
            errors.append(e)
    if errors:
        raise errors[0]
