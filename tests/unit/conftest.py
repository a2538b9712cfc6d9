"""Tier `unit`: no process: pure functions and in-memory objects, seconds in all (make test-fast)."""

from __future__ import annotations

import pytest

from tests.fixtures.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, "unit", timeout_s=30)


@pytest.fixture(autouse=True)
def _collect_own_garbage() -> None:
    """Unit tests open no sockets or processes: no full collection after each one (the
    suite-wide fixture of that name runs one to pin a leaked socket on the test that made it)."""
