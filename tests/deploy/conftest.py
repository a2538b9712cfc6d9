"""Tier `deploy`: deploy/: manifests, compose, Dockerfiles, Prometheus rules, dashboards against a real Prometheus."""

from __future__ import annotations

import pytest

from tests.fixtures.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, __file__, "deploy", timeout_s=120)
