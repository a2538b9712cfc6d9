"""Stateful property test: a snapshot kept up by applying each write's published changes equals a
full load of Redis after every step, and never needed a full load to get there.

Random writes (tenants, keys issued and revoked, versions, releases, rollout moves, retention
sweeps that delete) go through RegistryStore on a real redis-server while a SnapshotWatcher
follows the channel. The poll interval is long, so only the changes themselves can keep it up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

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
from registry.errors import RegistryError
from registry.keyspace import Keyspace
from registry.snapshot import SnapshotWatcher
from registry.store import RegistryStore
from tests.fixtures.redis import RedisServer
from tests.fixtures.registry import REGISTRY_SECRET

T = TypeVar("T")
TENANTS = st.sampled_from(["acme", "acme", "beta"])
ALIASES = st.sampled_from(["x", "x", "y"])
NAMES = st.sampled_from(["a", "b"])
ARTIFACT = ArtifactInfo(
    path=Path("/s/a"), relpath="a", digest="sha256:" + "1" * 64, base_model="tiny", rank=8,
    alpha=8.0, target_modules=("q_proj",), size_bytes=1,
)  # fmt: skip


class IncrementalMachine(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.Redis.from_url(url, socket_timeout=2)
        self.ticks = itertools.count(1_700_000_000)
        # A prefix of its own: pub/sub channels are shared by every database of the server.
        self.store = RegistryStore(
            self.client, REGISTRY_SECRET, timeout=2.0, keyspace=Keyspace("inc:"),
            clock=lambda: float(next(self.ticks)),
        )  # fmt: skip
        self.run(self.client.flushdb())
        self.watcher = SnapshotWatcher(self.store, self.client, poll_interval=60.0)
        self.run(self.watcher.start())
        self.key_ids: list[tuple[str, str]] = []

    def run(self, coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro

        return self.loop.run_until_complete(wrapped())

    def attempt(self, coro: Awaitable[Any]) -> Any:
        """Writes may be refused (missing tenant, stale revision...); refusals write nothing."""
        try:
            return self.run(coro)
        except RegistryError:
            return None

    def teardown(self) -> None:
        self.run(self.watcher.stop())
        self.run(self.client.aclose())
        self.loop.close()

    @initialize()
    def seed(self) -> None:
        self.attempt(self.store.create_tenant("acme", actor="p"))
        self.attempt(self.store.create_release("acme", "x", actor="p"))

    @rule(tenant=TENANTS)
    def create_tenant(self, tenant: str) -> None:
        self.attempt(self.store.create_tenant(tenant, actor="p"))

    @rule(tenant=TENANTS)
    def issue_key(self, tenant: str) -> None:
        issued = self.attempt(self.store.issue_key(tenant, actor="p"))
        if issued is not None:
            self.key_ids.append((tenant, issued[0].key_id))

    @rule(data=st.data())
    def revoke_key(self, data: st.DataObject) -> None:
        if self.key_ids:
            tenant, key_id = data.draw(st.sampled_from(self.key_ids))
            self.attempt(self.store.revoke_key(tenant, key_id, actor="p"))

    @rule(tenant=TENANTS, name=NAMES, adapter=st.booleans())
    def register_version(self, tenant: str, name: str, adapter: bool) -> None:
        if adapter:
            self.attempt(self.store.register_adapter_version(tenant, name, ARTIFACT, actor="p"))
        else:
            self.attempt(
                self.store.register_prompt_version(tenant, name, system_prompt="s", actor="p")
            )

    @rule(tenant=TENANTS, alias=ALIASES, adapter=st.none() | NAMES, prompt=st.none() | NAMES)
    def create_release(
        self, tenant: str, alias: str, adapter: str | None, prompt: str | None
    ) -> None:
        self.attempt(self.store.create_release(
            tenant, alias, adapter=None if adapter is None else f"{adapter}@1",
            prompt=None if prompt is None else f"{prompt}@1", actor="p",
        ))  # fmt: skip

    @rule(tenant=TENANTS, alias=ALIASES, n=st.integers(1, 4), weight=st.sampled_from([0.2, 1.0]),
          move=st.sampled_from(["canary", "promote", "rollback", "flags"]))  # fmt: skip
    def move(self, tenant: str, alias: str, n: int, weight: float, move: str) -> None:
        def change(a: Any) -> Any:
            if move == "canary":
                return rollout.start_canary(a, f"{alias}-r{n}", weight, now=1.0)
            if move == "promote":
                return rollout.promote(a, now=2.0)
            if move == "rollback":
                return rollout.rollback(a, "prop", now=3.0)
            return rollout.set_flags(a, {"kill_switch": not a.flags.kill_switch}, now=4.0)

        self.attempt(self.store.mutate_alias(
            tenant, alias, expected_revision=None, change=change, action=move, actor="p",
        ))  # fmt: skip

    @rule(retention_s=st.sampled_from([0.0, 5.0, 1e9]))
    def sweep(self, retention_s: float) -> None:
        self.attempt(self.store.sweep(retention_s))

    @invariant()
    def incremental_equals_full_load(self) -> None:
        epoch = self.run(self.store.epoch())
        assert self.run(self.watcher.wait_for_epoch(epoch, timeout=10.0))
        full = self.run(self.store.load_state())
        assert full.epoch == epoch
        assert self.watcher.state.view() == full.view()
        assert self.watcher.full_loads == 1  # the start; every write since came as changes


def test_incremental_snapshot_equals_full_load(redis_server: RedisServer) -> None:
    url = redis_server.url.removesuffix("/0") + "/4"  # its own database of the session server
    run_state_machine_as_test(
        lambda: IncrementalMachine(url),  # type: ignore[arg-type]  # any factory works
        settings=settings(
            max_examples=40, stateful_step_count=40, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )  # fmt: skip
