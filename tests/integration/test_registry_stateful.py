"""Stateful property test: RegistryStore on real Redis against a small in-memory reference model.

Every rule runs against both; after every step the whole Redis state (load_state) must equal the
model, and the epoch must count exactly the successful writes (a rejected request writes nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from adapters.artifact import ArtifactInfo
from registry import rollout
from registry.errors import (
    AlreadyExists,
    InvalidName,
    InvalidRollout,
    NotFound,
    RegistryError,
    RevisionConflict,
)
from registry.store import RegistryStore
from tests.fixtures.redis import RedisServer
from tests.fixtures.registry import REGISTRY_SECRET

T = TypeVar("T")
NOW = 1_700_000_000.0
TENANTS = st.sampled_from(["acme", "acme", "beta", "Bad!"])
NAMES = st.sampled_from(["a", "b"])
ALIASES = st.sampled_from(["x", "x", "y"])
LIVE_TENANTS = st.sampled_from(["acme"] * 5 + ["beta"])
LIVE_ALIASES = st.sampled_from(["x"] * 4 + ["y"])
STALE = st.sampled_from([False] * 5 + [True])
WEIGHTS = st.sampled_from([0.0, 0.3, 0.5, 0.5, 1.0, 0.7, 1.5, -0.1])
ARTIFACT = ArtifactInfo(
    path=Path("/s/a"), relpath="a", digest="sha256:" + "0" * 64, base_model="tiny", rank=8,
    alpha=8.0, target_modules=("q_proj",), size_bytes=1,
)  # fmt: skip


@dataclass
class ModelAlias:
    stable: str
    canary: str | None = None
    weight: float = 0.0
    revision: int = 1
    last_good: list[str] = field(default_factory=list)


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.Redis.from_url(url, socket_timeout=2)
        self.store = RegistryStore(self.client, REGISTRY_SECRET, timeout=2.0)
        self.run(self.client.flushdb())
        self.tenants: set[str] = set()
        self.adapters: dict[tuple[str, str], int] = {}
        self.prompts: dict[tuple[str, str], int] = {}
        self.releases: dict[tuple[str, str], int] = {}
        self.aliases: dict[tuple[str, str], ModelAlias] = {}
        self.writes = 0

    def run(self, coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro

        return self.loop.run_until_complete(wrapped())

    def expect(self, error: type[RegistryError] | None, coro: Awaitable[T]) -> T | None:
        """Run the call; it must raise `error` (or succeed when None)."""
        if error is None:
            result = self.run(coro)
            self.writes += 1
            return result
        with pytest.raises(error) as info:
            self.run(coro)
        assert type(info.value) is error
        return None

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    @initialize()
    def seed(self) -> None:
        """Start with a live alias so most steps exercise rollout, not missing tenants."""
        self.create_tenant("acme")
        self.create_release("acme", "x", None)
        self.create_release("acme", "x", None)

    @rule(tenant=TENANTS)
    def create_tenant(self, tenant: str) -> None:
        error = (
            InvalidName if tenant == "Bad!" else AlreadyExists if tenant in self.tenants else None
        )
        if self.expect(error, self.store.create_tenant(tenant, actor="prop")) is not None:
            self.tenants.add(tenant)

    @rule(tenant=TENANTS, name=NAMES, adapter=st.booleans())
    def register_version(self, tenant: str, name: str, adapter: bool) -> None:
        error = InvalidName if tenant == "Bad!" else None if tenant in self.tenants else NotFound
        counts = self.adapters if adapter else self.prompts
        if adapter:
            call = self.store.register_adapter_version(tenant, name, ARTIFACT, actor="prop")
            record = self.expect(error, call)
            version = None if record is None else record.version
        else:
            call2 = self.store.register_prompt_version(
                tenant, name, system_prompt="s", actor="prop"
            )
            prompt = self.expect(error, call2)
            version = None if prompt is None else prompt.version
        if version is not None:
            counts[(tenant, name)] = counts.get((tenant, name), 0) + 1
            assert version == counts[(tenant, name)]

    @rule(tenant=TENANTS, alias=ALIASES, ref=st.none() | st.tuples(NAMES, st.integers(1, 3)))
    def create_release(self, tenant: str, alias: str, ref: tuple[str, int] | None) -> None:
        error: type[RegistryError] | None = None
        if tenant == "Bad!":
            error = InvalidName
        elif tenant not in self.tenants or (
            ref is not None and self.adapters.get((tenant, ref[0]), 0) < ref[1]
        ):
            error = NotFound
        adapter = None if ref is None else f"{ref[0]}@{ref[1]}"
        release = self.expect(error, self.store.create_release(tenant, alias, adapter=adapter,
                                                               actor="prop"))  # fmt: skip
        if release is not None:
            n = self.releases[(tenant, alias)] = self.releases.get((tenant, alias), 0) + 1
            assert release.id == f"{alias}-r{n}"
            self.aliases.setdefault((tenant, alias), ModelAlias(stable=release.id))

    def mutate(self, tenant: str, alias: str, stale: bool, action: str, change: Any,
               model_error: type[RegistryError] | None, apply: Any) -> None:  # fmt: skip
        current = self.aliases.get((tenant, alias))
        error = model_error
        if current is None:
            error = NotFound
        elif stale:
            error = RevisionConflict
        expected = None if current is None else current.revision - 1 if stale else current.revision
        result = self.expect(error, self.store.mutate_alias(
            tenant, alias, expected_revision=expected, change=change, action=action, actor="prop",
        ))  # fmt: skip
        if result is not None and current is not None:
            apply(current)
            current.revision += 1

    @rule(tenant=LIVE_TENANTS, alias=LIVE_ALIASES, n=st.sampled_from([1, 2, 2, 2, 3, 4]),
          weight=WEIGHTS, stale=STALE)  # fmt: skip
    def canary(self, tenant: str, alias: str, n: int, weight: float, stale: bool) -> None:
        current = self.aliases.get((tenant, alias))
        rid = f"{alias}-r{n}"
        bad = (not 0 <= weight <= 1 or current is None or rid == current.stable
               or n > self.releases.get((tenant, alias), 0))  # fmt: skip

        def apply(m: ModelAlias) -> None:
            m.canary, m.weight = rid, weight

        self.mutate(tenant, alias, stale, "canary",
                    lambda a: rollout.start_canary(a, rid, weight, now=NOW),
                    InvalidRollout if bad else None, apply)  # fmt: skip

    @rule(tenant=LIVE_TENANTS, alias=LIVE_ALIASES, weight=WEIGHTS,
          stale=STALE)  # fmt: skip
    def set_weight(self, tenant: str, alias: str, weight: float, stale: bool) -> None:
        current = self.aliases.get((tenant, alias))
        bad = current is None or current.canary is None or not 0 <= weight <= 1

        def apply(m: ModelAlias) -> None:
            m.weight = weight

        self.mutate(tenant, alias, stale, "set_weight",
                    lambda a: rollout.set_weight(a, weight, now=NOW),
                    InvalidRollout if bad else None, apply)  # fmt: skip

    @rule(tenant=LIVE_TENANTS, alias=LIVE_ALIASES, stale=STALE)
    def promote(self, tenant: str, alias: str, stale: bool) -> None:
        current = self.aliases.get((tenant, alias))
        bad = current is None or current.canary is None

        def apply(m: ModelAlias) -> None:
            assert m.canary is not None
            m.last_good.append(m.stable)
            m.stable, m.canary, m.weight = m.canary, None, 0.0

        self.mutate(tenant, alias, stale, "promote", lambda a: rollout.promote(a, now=NOW),
                    InvalidRollout if bad else None, apply)  # fmt: skip

    @rule(tenant=LIVE_TENANTS, alias=LIVE_ALIASES, stale=STALE)
    def rollback(self, tenant: str, alias: str, stale: bool) -> None:
        current = self.aliases.get((tenant, alias))
        bad = current is None or (current.canary is None and not current.last_good)

        def apply(m: ModelAlias) -> None:
            if m.canary is not None:
                m.canary, m.weight = None, 0.0
            else:
                m.stable = m.last_good.pop()

        self.mutate(tenant, alias, stale, "rollback",
                    lambda a: rollout.rollback(a, "prop", now=NOW),
                    InvalidRollout if bad else None, apply)  # fmt: skip

    @invariant()
    def redis_matches_model(self) -> None:
        state = self.run(self.store.load_state())
        assert state.epoch == self.writes
        assert set(state.tenants) == self.tenants
        adapters = {(t, n): 0 for (t, n, _) in state.adapters}
        for t, n, v in state.adapters:
            adapters[(t, n)] = max(adapters[(t, n)], v)
        assert adapters == self.adapters
        assert len(state.adapters) == sum(self.adapters.values())
        assert len(state.prompts) == sum(self.prompts.values())
        assert len(state.releases) == sum(self.releases.values())
        got = {k: (a.stable, a.canary, a.canary_weight, a.revision, list(a.last_good))
               for k, a in state.aliases.items()}  # fmt: skip
        want = {k: (m.stable, m.canary, m.weight, m.revision, m.last_good)
                for k, m in self.aliases.items()}  # fmt: skip
        assert got == want


def test_registry_lifecycle_matches_reference_model(redis_server: RedisServer) -> None:
    url = redis_server.url.removesuffix("/0") + "/3"  # its own database of the session server
    run_state_machine_as_test(
        lambda: RegistryMachine(url),  # type: ignore[arg-type]  # any factory works
        settings=settings(
            max_examples=60, stateful_step_count=30, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )  # fmt: skip
