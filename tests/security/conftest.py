"""Tier `security`: S-rows of the README: isolation, leaks, limits, admin, fuzzing."""

from __future__ import annotations

import pytest

from tests.fixtures.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, "security", timeout_s=300)
