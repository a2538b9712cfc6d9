"""Retention sweep on a real redis-server: what nothing reaches goes once old enough, the rest and
every audit entry stay, a record that changes during the sweep is left for the next one."""

from __future__ import annotations

import redis.asyncio as aioredis

from registry import rollout
from registry.keyspace import Keyspace
from registry.store import RegistryStore
from tests.fixtures.registry import REGISTRY_SECRET

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_sweep_deletes_only_unreachable_records_past_retention(
    redis_client: aioredis.Redis,
) -> None:
    clock = Clock()
    store = RegistryStore(redis_client, REGISTRY_SECRET, timeout=2.0, clock=clock)
    await store.create_tenant("acme", actor="root")
    old_key, _ = await store.issue_key("acme", actor="root")
    live_key, _ = await store.issue_key("acme", actor="root")
    await store.revoke_key("acme", old_key.key_id, actor="root")
    for i in (1, 2, 3):
        await store.register_prompt_version("acme", "p", system_prompt=f"v{i}", actor="root")
        await store.create_release("acme", "chat", prompt=f"p@{i}", actor="root")
    await store.register_prompt_version("acme", "p", system_prompt="unused", actor="root")
    # r1 stable; r2 promoted (r1 in last_good); r3 made a canary, then rolled back: unreachable.
    for change in (
        lambda a: rollout.start_canary(a, "chat-r2", 0.5, now=clock.now),
        lambda a: rollout.promote(a, now=clock.now),
        lambda a: rollout.start_canary(a, "chat-r3", 0.5, now=clock.now),
        lambda a: rollout.rollback(a, "bad", now=clock.now),
    ):
        await store.mutate_alias("acme", "chat", expected_revision=None, change=change,
                                 action="move", actor="root")  # fmt: skip
    audit_before = len(await store.audit("acme", 1000))

    clock.now += 10 * DAY  # inside the retention period: nothing goes
    assert (await store.sweep(30 * DAY))["releases"] == 0

    clock.now += 30 * DAY
    counts = await store.sweep(30 * DAY)
    assert counts == {"keys": 1, "releases": 1, "adapters": 0, "prompts": 2,
                      "skipped_tenants": 0}  # fmt: skip
    state = await store.load_state()
    assert set(state.releases) == {("acme", "chat-r1"), ("acme", "chat-r2")}
    assert set(state.prompts) == {("acme", "p", 1), ("acme", "p", 2)}  # r3's p@3 and p@4 went
    assert await store.find_key(old_key.key_hmac) is None
    assert await store.find_key(live_key.key_hmac) is not None
    ks = Keyspace()
    assert await redis_client.hget(ks.key_ids, f"acme:{old_key.key_id}") is None
    audit = await store.audit("acme", 1000)
    assert len(audit) == audit_before + 1  # every earlier entry stays, plus the sweep's own
    assert audit[0]["action"] == "retention_sweep"
    assert audit[0]["before"]["releases"] == ["acme:chat-r3"]
    assert (await store.sweep(30 * DAY))["prompts"] == 0  # idempotent


async def test_sweep_leaves_a_tenant_that_changed_meanwhile(redis_client: aioredis.Redis) -> None:
    clock = Clock()
    store = RegistryStore(redis_client, REGISTRY_SECRET, timeout=2.0, clock=clock)
    await store.create_tenant("acme", actor="root")
    await store.register_prompt_version("acme", "p", system_prompt="v1", actor="root")
    clock.now += 40 * DAY
    original = store._sweep_tenant

    async def racing(sweep, actor):  # type: ignore[no-untyped-def]
        # A release naming p@1 lands between the sweep's read and its delete.
        await store.create_release("acme", "chat", prompt="p@1", actor="root")
        await original(sweep, actor)

    store._sweep_tenant = racing  # type: ignore[method-assign]
    counts = await store.sweep(30 * DAY)
    assert counts["skipped_tenants"] == 1
    assert ("acme", "p", 1) in (await store.load_state()).prompts


async def test_one_sweep_per_period_across_the_fleet(redis_client: aioredis.Redis) -> None:
    stores = [RegistryStore(redis_client, REGISTRY_SECRET, timeout=2.0) for _ in range(3)]
    results = [await s.sweep_if_due(DAY, every_s=3600.0) for s in stores]
    assert sum(r is not None for r in results) == 1
