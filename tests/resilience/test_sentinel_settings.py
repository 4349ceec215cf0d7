"""A Redis Sentinel configuration the app cannot use stops it at start, saying what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live import ROOT


def manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `manage.py ARGS` with only these variables (and PATH) set; nothing is connected to."""
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DEBUG": "true",
        "BOOKSTORE_VAR_DIR": str(tmp_path / "var"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_SENTINELS": "127.0.0.1:26379"},
            "set one of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_NODES",
        ),
        (
            {"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_CLUSTER_NODES": "127.0.0.1:7000"},
            "set one of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_NODES",
        ),
        ({"REDIS_SENTINELS": "127.0.0.1:26379,sentinel-b"}, "REDIS_SENTINELS entry 'sentinel-b' is not host:port"),
        ({"REDIS_CLUSTER_NODES": "127.0.0.1:7000,node-b"}, "REDIS_CLUSTER_NODES entry 'node-b' is not host:port"),
    ],
)
def test_an_unusable_sentinel_setting_stops_start_up(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = manage(tmp_path, "check", **env)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_the_cache_connects_to_the_cluster_nodes_given(tmp_path: Path) -> None:
    show = "from django.conf import settings; c = settings.CACHES['default']"
    show += "; print(c['LOCATION'], c['OPTIONS']['CLUSTER_NODES'], c['OPTIONS']['CONNECTION_FACTORY'])"
    result = manage(tmp_path, "shell", "-c", show, REDIS_CLUSTER_NODES="127.0.0.1:7000, [::1]:7001")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        "redis://127.0.0.1:7000/0 [('127.0.0.1', 7000), ('::1', 7001)] bookstore.redis_cluster.ClusterConnectionFactory"
    )


def test_the_cache_asks_the_sentinels_given(tmp_path: Path) -> None:
    show = "from django.conf import settings; c = settings.CACHES['default']"
    show += "; print(c['LOCATION'], c['OPTIONS']['SENTINELS'])"
    result = manage(
        tmp_path, "shell", "-c", show, REDIS_SENTINELS="127.0.0.1:26379, [::1]:26380", REDIS_SENTINEL_SERVICE="shop"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['redis://shop/0'] [('127.0.0.1', 26379), ('::1', 26380)]"
