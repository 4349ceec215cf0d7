"""deploy/compose.fleet.yaml: every part is there and agrees with the others, and its files run.

No container runs here (the machines are offline): the compose file is read as data and checked
against the app's own settings, and the very configuration files it mounts run on loopback with
the same programs (nginx in front of two gunicorn instances, Redis with its sentinels, PgBouncer).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.live import HOST, ROOT, LiveServer, PgBouncer, RedisServer, database_url, request
from tests.ops.nginx import NginxServer
from tests.ops.test_deploy import run_promtool

DEPLOY = ROOT / "deploy"
FLEET = DEPLOY / "compose.fleet.yaml"
REDIS_CONF = DEPLOY / "redis" / "redis.conf"
SENTINEL_CONF = DEPLOY / "redis" / "sentinel.conf"
PGBOUNCER_INI = DEPLOY / "pgbouncer" / "pgbouncer.ini"
SCRAPE = DEPLOY / "prometheus" / "prometheus.fleet.yml"
TEMPLATE = DEPLOY / "nginx" / "templates" / "default.conf.template"

# Values for the variables compose asks of the operator (${NAME:?...}).
REQUIRED = {"POSTGRES_PASSWORD": "fleet-password", "SECRET_KEY": "fleet-secret-key-for-the-settings-check"}
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}")
# The addresses and files a loopback run replaces with its own.
LOOPBACK_OWNED = {"listen_addr", "listen_port", "unix_socket_dir", "auth_type", "auth_file", "logfile"}


def interpolate(value: Any) -> Any:
    """Resolve ${NAME}, ${NAME:-default} and ${NAME:?error} as compose would, with REQUIRED set."""
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if name in REQUIRED:
            return REQUIRED[name]
        if kind == ":-":
            return rest
        raise KeyError(f"{name} has no default and is not in REQUIRED")

    return INTERPOLATION.sub(one, value)


def services() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load(FLEET.read_text())["services"]
    return found


def env_of(service: str) -> dict[str, str]:
    return {name: str(interpolate(value)) for name, value in services()[service]["environment"].items()}


def apps() -> list[str]:
    """Return the app instances: the services that run the app image and publish /health/ready."""
    return sorted(
        name
        for name, service in services().items()
        if service.get("image") == "bookstore:latest" and "healthcheck" in service
    )


def sentinel_conf() -> list[list[str]]:
    return [line.split() for line in SENTINEL_CONF.read_text().splitlines() if line and not line.startswith("#")]


def redis_conf() -> dict[str, str]:
    pairs = (line.split(None, 1) for line in REDIS_CONF.read_text().splitlines() if line and not line.startswith("#"))
    return dict(pairs)


def pgbouncer_ini() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=None, comment_prefixes=(";", "#"))
    parser.read_string(PGBOUNCER_INI.read_text())
    return parser


def connect_query() -> str:
    found = re.search(r"connect_query='([^']*)'", pgbouncer_ini()["databases"]["bookstore"])
    assert found, "the database line sets the statement timeout"
    return found.group(1)


# Runs in a process of its own with the app's settings, as a worker would: prints what they became.
SETTINGS_PROBE = """
import json, django
django.setup()
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "host": db["HOST"], "port": str(db["PORT"]), "name": db["NAME"],
    "startup_options": db["OPTIONS"].get("options"),
    "server_side_cursors_off": db.get("DISABLE_SERVER_SIDE_CURSORS", False),
    "pool_max": db["OPTIONS"]["pool"]["max_size"],
    "statement_timeout_ms": settings.DB_STATEMENT_TIMEOUT_MS,
    "cache_location": settings.CACHES["default"]["LOCATION"],
    "sentinels": settings.CACHES["default"]["OPTIONS"].get("SENTINELS"),
    "allowed_hosts": settings.ALLOWED_HOSTS,
    "fallback_workers": settings.RESILIENCE_FALLBACK_WORKERS,
    "trusted_proxies": settings.TRUSTED_PROXY_COUNT,
}))
"""


def app_settings(service: str, tmp_path: Path) -> dict[str, Any]:
    """Return what the app's settings make of ``service``'s environment in the fleet."""
    token = tmp_path / "metrics_token"
    token.write_text("fleet-metrics-token")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_", "GUNICORN_"))}
    for name in list(environment):
        if name.startswith(("REDIS_", "DB_", "DATABASE_", "RESILIENCE_")):
            del environment[name]
    environment.update(env_of(service))
    environment.update(
        DJANGO_SETTINGS_MODULE="bookstore.settings",
        METRICS_BEARER_TOKEN_FILE=str(token),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    ran = subprocess.run(
        [sys.executable, "-c", SETTINGS_PROBE], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    result: dict[str, Any] = json.loads(ran.stdout.strip().splitlines()[-1])
    return result


# --- the compose file ----------------------------------------------------------------------------


def test_fleet_runs_two_apps_behind_nginx_with_pgbouncer_sentinels_and_prometheus() -> None:
    found = services()

    assert apps() == ["app1", "app2"]
    assert {
        "postgres", "pgbouncer", "redis-1", "redis-2", "redis-3", "sentinel-1", "sentinel-2", "sentinel-3",
        "migrate", "app1", "app2", "nginx", "prometheus",
    } == set(found)  # fmt: skip
    # The same image and environment on every instance: they differ only by name.
    assert found["app1"] == found["app2"]
    assert found["app1"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert "/health/ready" in " ".join(found["app1"]["healthcheck"]["test"])
    assert found["app1"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for dependency in ("pgbouncer", "sentinel-1", "sentinel-2", "sentinel-3"):
        assert found["app1"]["depends_on"][dependency]["condition"] == "service_healthy"
        assert found[dependency]["healthcheck"]["test"]
    # Only nginx and Prometheus publish a port: the app trusts one proxy's X-Forwarded-For.
    assert sorted(name for name, service in found.items() if service.get("ports")) == ["nginx", "prometheus"]
    assert found["prometheus"].get("profiles") is None, "the fleet is always watched"


def test_fleet_nginx_sends_to_every_app_instance_and_renders_every_variable() -> None:
    nginx = services()["nginx"]
    servers = re.findall(r"server ([\w.-]+):(\d+);", nginx["environment"]["BOOKSTORE_UPSTREAM_SERVERS"])

    assert sorted(host for host, _ in servers) == apps()
    assert {port for _, port in servers} == {"8000"}
    assert all(services()[app]["expose"] == ["8000"] for app in apps())
    assert set(re.findall(r"\$\{([A-Z_]+)\}", TEMPLATE.read_text())) == set(nginx["environment"])
    assert (
        nginx["environment"]["DATA_UPLOAD_MAX_MEMORY_SIZE"]
        == services()["app1"]["environment"]["DATA_UPLOAD_MAX_MEMORY_SIZE"]
    )
    healthy = {name for name, dependency in nginx["depends_on"].items() if dependency["condition"] == "service_healthy"}
    assert healthy == set(apps())


def test_fleet_prometheus_scrapes_every_instance_with_the_bearer_token() -> None:
    config = yaml.safe_load(SCRAPE.read_text())
    [job] = config["scrape_configs"]
    prometheus = services()["prometheus"]

    assert job["job_name"] == "bookstore", "the alert rules select this job"
    assert sorted(job["static_configs"][0]["targets"]) == [f"{app}:8000" for app in apps()]
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert prometheus["secrets"] == ["metrics_token"]
    assert config["rule_files"] == ["alerts.yml"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert prometheus["command"] == [f"--config.file=/etc/prometheus/{SCRAPE.name}"]
    run_promtool("check", "config", "--syntax-only", str(SCRAPE))


def test_fleet_app_settings_go_through_pgbouncer_and_the_sentinels(tmp_path: Path) -> None:
    found = app_settings("app1", tmp_path)
    ini = pgbouncer_ini()

    # PgBouncer in transaction mode, and the app told so: no startup options, no server-side cursors.
    assert (found["host"], found["port"]) == ("pgbouncer", ini["pgbouncer"]["listen_port"])
    assert found["name"] in ini["databases"]
    assert ini["pgbouncer"]["pool_mode"] == "transaction"
    assert found["startup_options"] is None
    assert found["server_side_cursors_off"] is True
    # Every server connection gets the timeout the app checks for.
    assert connect_query() == f"SET statement_timeout = {found['statement_timeout_ms']}"
    # Redis through the three sentinels, on the service they monitor.
    sentinels = sorted(name for name in services() if name.startswith("sentinel-"))
    assert sorted(host for host, _ in found["sentinels"]) == sentinels
    assert {port for _, port in found["sentinels"]} == {int(line[1]) for line in sentinel_conf() if line[0] == "port"}
    [monitor] = [line for line in sentinel_conf() if line[:2] == ["sentinel", "monitor"]]
    assert found["cache_location"] == [f"redis://{monitor[2]}/0"]
    assert env_of("app1")["REDIS_SENTINEL_SERVICE"] == monitor[2]
    # Prometheus asks for /metrics by each instance's name; a fallback divides by the whole fleet.
    assert set(apps()) <= set(found["allowed_hosts"])
    assert found["fallback_workers"] == len(apps()) * int(env_of("app1")["GUNICORN_WORKERS"])
    assert found["trusted_proxies"] == 1


def test_fleet_migrates_straight_to_postgres_outside_transaction_pooling(tmp_path: Path) -> None:
    found = app_settings("migrate", tmp_path)

    assert (found["host"], found["port"]) == ("postgres", "5432")
    assert found["startup_options"] == f"-c statement_timeout={found['statement_timeout_ms']}"
    assert services()["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]


def test_fleet_connection_budget_fits_pgbouncer_and_postgres(tmp_path: Path) -> None:
    found = app_settings("app1", tmp_path)
    bouncer = pgbouncer_ini()["pgbouncer"]
    postgres_max = int(services()["postgres"]["command"][-1].split("=")[1])
    clients = len(apps()) * int(env_of("app1")["GUNICORN_WORKERS"]) * found["pool_max"]
    servers = int(bouncer["default_pool_size"]) + int(bouncer["reserve_pool_size"])

    assert clients == 64, "the README's budget table: 2 instances x 4 workers x DB_POOL_MAX 8"
    assert int(bouncer["max_client_conn"]) >= clients + 1, "every worker's pool, and the migration"
    assert servers <= int(bouncer["max_db_connections"]) < postgres_max - 10, "room left for operators"
    # A request holds a server connection only while it runs: fewer than the fleet's threads suffice.
    assert servers <= len(apps()) * int(env_of("app1")["GUNICORN_WORKERS"]) * int(env_of("app1")["GUNICORN_THREADS"])


def test_fleet_redis_quorum_is_two_of_three_sentinels_over_two_replicas() -> None:
    found = services()
    [monitor] = [line for line in sentinel_conf() if line[:2] == ["sentinel", "monitor"]]
    replicas = [name for name, service in found.items() if "--replicaof" in service.get("command", [])]
    conf = redis_conf()

    assert monitor[2:] == ["mymaster", "redis-1", "6379", "2"]
    assert len([name for name in found if name.startswith("sentinel-")]) == 3
    assert sorted(replicas) == ["redis-2", "redis-3"]
    for name in replicas:
        assert found[name]["command"][-2:] == ["redis-1", "6379"]
    # Every server runs the same file, as any of them may be promoted.
    assert {tuple(found[name]["volumes"]) for name in ("redis-1", *replicas)} == {
        ("./redis/redis.conf:/usr/local/etc/redis/redis.conf:ro",)
    }
    assert conf["min-replicas-to-write"] == "1"
    assert 1 <= int(conf["min-replicas-max-lag"]) <= 10
    assert len(replicas) >= 2, "with one replica, min-replicas-to-write would refuse writes after a failover"
    assert (conf["save"], conf["appendonly"]) == ('""', "no")


# --- the same files, run on loopback -------------------------------------------------------------


def wait_for(condition: Callable[[], bool], seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def served(server: LiveServer, probe: str) -> int:
    """Return how many requests carrying this X-Probe value the server has logged."""
    return sum(1 for fields in server.access_lines() if fields[-1] == probe)


@pytest.mark.live
def test_fleet_nginx_spreads_requests_over_both_instances_and_survives_losing_one(
    live_servers: Callable[..., LiveServer], nginx: Callable[..., NginxServer]
) -> None:
    first, second = live_servers(workers=1, probe=True), live_servers(workers=1, probe=True)
    proxy = nginx(upstreams=(f"{HOST}:{first.port}", f"{HOST}:{second.port}"))
    probe = "fleet"

    replies = [request(proxy.port, "/health/live", headers={"X-Probe": probe}) for _ in range(20)]

    assert [reply.status for reply in replies] == [200] * 20
    deadline = time.monotonic() + 10  # gunicorn writes its access log line after the answer
    while served(first, probe) + served(second, probe) < 20:
        assert time.monotonic() < deadline, (served(first, probe), served(second, probe))
        time.sleep(0.02)
    # nginx sends to both in turn
    assert served(first, probe) >= 5
    assert served(second, probe) >= 5

    second.stop()
    after = [request(proxy.port, "/health/live", headers={"X-Probe": "after"}) for _ in range(10)]

    assert [reply.status for reply in after] == [200] * 10, "a refused connection is retried on the other"
    wait_for(lambda: served(first, "after") == 10, 10, "the remaining instance served all ten")


@pytest.fixture
def fleet_redis() -> Iterator[tuple[list[RedisServer], list[RedisServer]]]:
    """Start deploy/redis's primary, two replicas and three sentinels on loopback; return (servers, sentinels)."""
    conf = REDIS_CONF.read_text()
    servers: list[RedisServer] = []
    sentinels: list[RedisServer] = []
    try:
        servers.append(RedisServer(conf=conf).start())
        primary = servers[0].port
        for _ in range(2):
            servers.append(RedisServer(conf=conf, args=("--replicaof", HOST, str(primary))).start())
        # The compose service name becomes the loopback address; everything else is the file's.
        sentinel = SENTINEL_CONF.read_text().replace("redis-1 6379", f"{HOST} {primary}")
        for _ in range(3):
            sentinels.append(RedisServer(conf=sentinel, args=("--sentinel",)).start())
        yield servers, sentinels
    finally:
        for server in [*sentinels, *servers]:
            server.close()


def inline(port: int, command: str) -> str:
    """Send one inline command; return the first line of the reply as the server wrote it."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(command.encode() + b"\r\n")
        return sock.makefile("rb").readline().decode().rstrip("\r\n")


def sentinel_view(sentinel: RedisServer) -> dict[str, Any]:
    client = sentinel.client(decode_responses=True)
    try:
        master: dict[str, Any] = client.sentinel_master("mymaster")
        return master
    finally:
        client.close()


@pytest.mark.live
def test_fleet_redis_files_make_a_quorum_and_refuse_writes_cut_off_from_every_replica(
    fleet_redis: tuple[list[RedisServer], list[RedisServer]],
) -> None:
    servers, sentinels = fleet_redis
    primary = servers[0].client()

    def everyone_knows_everyone() -> bool:
        views = [sentinel_view(sentinel) for sentinel in sentinels]
        return all(view["num-slaves"] == 2 and view["num-other-sentinels"] == 2 for view in views)

    wait_for(everyone_knows_everyone, 30, "the sentinels did not find the replicas and each other")
    for sentinel in sentinels:
        client = sentinel.client(decode_responses=True)
        # A majority can authorise a failover (read raw: redis-py compares the whole line with "OK").
        assert inline(sentinel.port, "SENTINEL CKQUORUM mymaster").startswith("+OK 3 usable Sentinels")
        assert sentinel_view(sentinel)["quorum"] == 2
        client.close()

    def written() -> bool:
        try:
            return bool(primary.set("fleet:write", "1"))
        except redis.ResponseError:
            return False  # until the replicas' first acknowledgements: "NOREPLICAS"

    wait_for(written, 10, "the primary refuses writes with both replicas following it")

    for replica in servers[1:]:
        replica.stop()

    errors: list[str] = []

    def refused() -> bool:
        try:
            primary.set("fleet:write", "2")
        except redis.ResponseError as e:
            errors.append(str(e))
            return True
        return False

    # A stopped replica's link closes at once; one cut off by a partition would count for
    # min-replicas-max-lag (5 s) after its last acknowledgement.
    wait_for(refused, 20, "the primary still takes writes with no replica")
    assert errors[0].startswith("NOREPLICAS"), errors
    assert primary.get("fleet:write") == b"1"
    primary.close()


@pytest.mark.live
def test_fleet_pgbouncer_settings_carry_the_app_in_transaction_mode(transactional_db: None) -> None:
    ini = pgbouncer_ini()
    settings = {name: value for name, value in ini["pgbouncer"].items() if name not in LOOPBACK_OWNED}
    probe = """
import json, django
django.setup()
from django.db import connection, transaction
from catalog.models import Book
with transaction.atomic():
    count = Book.objects.count()
with connection.cursor() as cursor:
    cursor.execute("SHOW statement_timeout")
    timeout = cursor.fetchone()[0]
print(json.dumps({"books": count, "timeout": timeout}))
"""
    with PgBouncer(connect_query=connect_query(), settings=settings) as bouncer:
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
        environment.update(
            DJANGO_SETTINGS_MODULE="bookstore.settings",
            DATABASE_URL=bouncer.url(database_url()),
            SECRET_KEY="fleet-pgbouncer-secret-key",
            DB_TRANSACTION_POOLING=env_of("app1")["DB_TRANSACTION_POOLING"],
            DB_STATEMENT_TIMEOUT_MS=env_of("app1")["DB_STATEMENT_TIMEOUT_MS"],
            LOG_LEVEL="WARNING",
        )
        ran = subprocess.run(
            [sys.executable, "-c", probe], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
        )
        log = bouncer.log()

    assert ran.returncode == 0, ran.stderr + log
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert isinstance(result["books"], int)
    assert result["timeout"] == "15s"
    assert "statement_timeout_mismatch" not in ran.stdout + ran.stderr
    assert "unsupported startup parameter" not in log
