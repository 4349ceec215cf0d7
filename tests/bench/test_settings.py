"""The stacks bench/settings.py serves: the product's, without the resilience layer, or a minimal one."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest

import bookstore.settings

RESILIENCE_LAYER = {"resilience.http.middleware.ResilienceMiddleware", "resilience.http.stale.StaleCopyMiddleware"}


@pytest.fixture
def bench_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Yield bench.settings as read after the test's environment changes; read it afresh afterwards."""
    module = importlib.import_module("bench.settings")
    yield module
    monkeypatch.undo()
    importlib.reload(module)


def test_product_stack_by_default(bench_settings: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESILIENCE_MIDDLEWARE", raising=False)
    monkeypatch.delenv("BENCH_MINIMAL_STACK", raising=False)
    assert importlib.reload(bench_settings).MIDDLEWARE == bookstore.settings.MIDDLEWARE
    assert set(bookstore.settings.MIDDLEWARE) >= RESILIENCE_LAYER


def test_resilience_off_drops_the_layer_and_its_stale_copies(
    bench_settings: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESILIENCE_MIDDLEWARE", "false")
    monkeypatch.delenv("BENCH_MINIMAL_STACK", raising=False)
    kept = importlib.reload(bench_settings).MIDDLEWARE
    assert kept == [m for m in bookstore.settings.MIDDLEWARE if m not in RESILIENCE_LAYER]
