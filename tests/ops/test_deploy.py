"""deploy/: the alert rules, scrape config, compose file and dashboard are valid and use metrics we export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "grafana" / "bookstore-dashboard.json"
DOCKERFILE = DEPLOY / "Dockerfile"

# Our metric names: everything else in an expression is PromQL (functions, labels, keywords).
OUR_METRIC = re.compile(r"\b(?:bookstore|django)_[A-Za-z0-9_]+\b")
# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up"}
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


def promtool() -> str | None:
    """Return the promtool path; in CI its absence is a failure, not a reason to skip."""
    path = shutil.which("promtool")
    if path is None and os.environ.get("CI") == "true":
        pytest.fail("promtool is not installed: .ci/run installs Debian's prometheus package for it")
    return path


def run_promtool(*args: str) -> None:
    tool = promtool()
    if tool is None:
        return
    result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    exprs += [v["definition"] for v in board["templating"]["list"] if v.get("type") == "query"]
    return exprs


@pytest.fixture
def exported(db: None) -> set[str]:
    """Return every sample name the app's /metrics can report, from a real scrape."""
    response = Client().get("/metrics")
    assert response.status_code == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(response.content.decode()):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


# --- alert rules ---------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    run_promtool("check", "rules", str(ALERTS))
    run_promtool("test", "rules", str(ALERT_TESTS))


def test_alert_rules_are_well_formed() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]

    assert len(names) == len(set(names))
    assert {"BookstoreBreakerOpen", "BookstoreRateLimitSurge", "BookstoreResilienceStoreErrors"} <= set(names)
    assert {"BookstoreNotReady", "BookstoreDown"} <= set(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert DURATION.fullmatch(rule["for"]), rule["alert"]
    breaker = next(rule for rule in rules if rule["alert"] == "BookstoreBreakerOpen")
    assert 'bookstore_breaker_state{state=~"open|forced-open"}' in breaker["expr"]
    assert breaker["for"] == "5m"


def test_alert_rules_use_only_metrics_we_export(exported: set[str]) -> None:
    for rule in alert_rules():
        used = set(OUR_METRIC.findall(rule["expr"]))
        assert used or PROMETHEUS_OWN & set(re.findall(r"\w+", rule["expr"])), rule["alert"]
        assert used <= exported, f"{rule['alert']}: {sorted(used - exported)} not exported"


def test_scrape_config_is_valid_and_sends_the_bearer_token() -> None:
    config = load_yaml(PROMETHEUS)
    [job] = config["scrape_configs"]

    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert "credentials_file" in job["authorization"] or "credentials" in job["authorization"]
    assert config["rule_files"] == ["alerts.yml"]
    run_promtool("check", "config", "--syntax-only", str(PROMETHEUS))


# --- dashboard -----------------------------------------------------------------------------------


def test_dashboard_uses_only_metrics_we_export(exported: set[str]) -> None:
    exprs = dashboard_exprs()
    used = {name for expr in exprs for name in OUR_METRIC.findall(expr)}

    assert len(exprs) >= 15
    assert used <= exported, sorted(used - exported)
    for needed in (
        "bookstore_ratelimit_decisions_total",
        "bookstore_breaker_state",
        "bookstore_breaker_transitions_total",
        "django_http_requests_latency_seconds_by_view_method_bucket",
        "django_db_execute_total",
        "django_cache_get_hits_total",
    ):
        assert needed in used


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool checks PromQL only inside rule files: wrap each query in a recording rule.
    substitutions = {"$__rate_interval": "5m", "$policy": ".*"}
    rules = []
    for n, expr in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):
            continue
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", str(path))


def test_dashboard_panels_are_laid_out_and_use_the_datasource_variable() -> None:
    board = json.loads(DASHBOARD.read_text())

    assert board["uid"]
    assert board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"


# --- compose and image ---------------------------------------------------------------------------


def test_compose_runs_postgres_redis_and_the_app_behind_readiness() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]

    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    app = services["app"]
    assert app["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert "/health/ready" in " ".join(app["healthcheck"]["test"])
    env = app["environment"]
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR"):
        assert name in env
    assert env["DATABASE_URL"].startswith("postgres://")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:6379/")
    assert "app" in env["ALLOWED_HOSTS"], "Prometheus scrapes the app by its service name"
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for dependency in ("postgres", "redis"):
        assert app["depends_on"][dependency]["condition"] == "service_healthy"
        assert services[dependency]["healthcheck"]["test"]
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    # The monitoring profile mounts the same rules the tests check.
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]


def test_compose_publishes_nginx_only_and_keeps_its_limits_equal_to_the_apps() -> None:
    services = load_yaml(COMPOSE)["services"]
    app, nginx = services["app"], services["nginx"]

    assert [name for name, service in services.items() if service.get("ports")] == ["nginx", "prometheus"]
    assert nginx["ports"] == ["${BOOKSTORE_PORT:-8000}:8080"]
    assert app["expose"] == ["8000"]
    assert app["environment"]["TRUSTED_PROXY_COUNT"] == 1, "nginx is the one proxy in front"
    assert nginx["environment"]["BOOKSTORE_UPSTREAM_SERVERS"] == "server app:8000;"
    assert nginx["environment"]["NGINX_LISTEN"] == "8080"
    assert nginx["environment"]["DATA_UPLOAD_MAX_MEMORY_SIZE"] == app["environment"]["DATA_UPLOAD_MAX_MEMORY_SIZE"]
    # The image renders every variable the template uses; a missing one would stay "${...}" in nginx.conf.
    template = (DEPLOY / "nginx" / "templates" / "default.conf.template").read_text()
    assert set(re.findall(r"\$\{([A-Z_]+)\}", template)) == set(nginx["environment"])
    assert "./nginx/templates:/etc/nginx/templates:ro" in nginx["volumes"]
    problems_dir = nginx["environment"]["NGINX_PROBLEMS_DIR"]
    assert f"./nginx/problems:{problems_dir}:ro" in nginx["volumes"]


def test_dockerfile_builds_the_app_as_documented() -> None:
    text = DOCKERFILE.read_text()

    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install --require-hashes -r requirements/main.txt" in text, "the pinned runtime set"
    assert "collectstatic --noinput" in text
    assert re.search(r"^USER \w+", text, re.M), "the app does not run as root"
    assert 'CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "bookstore.wsgi"]' in text
    assert "PROMETHEUS_MULTIPROC_DIR=" in text


def test_gunicorn_config_keeps_the_loaded_app_out_of_garbage_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import runpy

    conf = str(Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent-not-used")
    hooks = runpy.run_path(conf)
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        hooks["pre_fork"](None, None)
        frozen = gc.get_freeze_count()
        assert frozen > 10_000, "Django and the app's objects are frozen before workers fork"
        gc.unfreeze()
        hooks["post_worker_init"](None)
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_gunicorn_config_bounds_each_workers_gil_hold_to_one_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy
    import sys

    conf = str(Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py")
    before = sys.getswitchinterval()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent-not-used")  # no temporary folder made
    try:
        runpy.run_path(conf)["post_fork"](None, None)
        assert sys.getswitchinterval() == pytest.approx(0.001)
        monkeypatch.setenv("GUNICORN_SWITCH_INTERVAL_MS", "2.5")
        runpy.run_path(conf)["post_fork"](None, None)
        assert sys.getswitchinterval() == pytest.approx(0.0025)
    finally:
        sys.setswitchinterval(before)


def test_gunicorn_config_defaults_to_threaded_workers_that_accept_what_nginx_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import runpy

    conf = str(Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent-not-used")
    for name in ("GUNICORN_WORKER_CLASS", "GUNICORN_THREADS", "GUNICORN_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    config = runpy.run_path(conf)

    assert config["worker_class"] == "gthread"
    assert config["threads"] == 4
    assert config["threads"] <= 8, "no more threads than DB_POOL_MAX's default: none waits for a connection"
    # nginx's large_client_header_buffers (8k) bounds the request line and each header field.
    template = (DEPLOY / "nginx" / "templates" / "default.conf.template").read_text()
    assert re.search(r"^\s*large_client_header_buffers 4 8k;", template, re.M)
    assert config["limit_request_line"] == config["limit_request_field_size"] == 8190
