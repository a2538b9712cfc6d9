"""Tier `reliability`: R-rows of the README: faults, disconnects, soak, Redis outages."""

from __future__ import annotations

import pytest

from tests.fixtures.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, "reliability", timeout_s=300)
