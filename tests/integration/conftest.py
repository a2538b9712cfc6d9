"""Tier `integration`: real redis-server, the fake engine, gateways in-process or as processes; no vLLM."""

from __future__ import annotations

import pytest

from tests.fixtures.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, "integration", timeout_s=120)
