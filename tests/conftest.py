"""Shared fixtures live in tests/fixtures/<noun>.py, one module per real part, registered here."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.engine",
    "tests.fixtures.redis",
    "tests.fixtures.sentinel",
    "tests.fixtures.registry",
    "tests.fixtures.manifests",
    "tests.fixtures.prometheus",
    "tests.fixtures.faultproxy",
    "tests.fixtures.objectstore",
    "tests.fixtures.fake_engine",
    "tests.fixtures.dnsserver",
    "tests.fixtures.gateway",  # last: it imports the fixtures above
    "tests.fixtures.inprocess",  # after gateway: it reuses SeededTenant
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run @slow variants")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant: make test-long")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _collect_own_garbage() -> Iterator[None]:
    """A full collection after every test, so an unclosed socket or transport a test leaves behind
    raises its ResourceWarning (an error here) in that test's teardown, not in whichever later
    test happens to trigger the collection."""
    yield
    gc.collect()
