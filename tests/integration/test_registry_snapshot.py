"""SnapshotWatcher against a real redis-server: convergence, outages, restarts, regressions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from registry.compact import key_rec
from registry.errors import RegistryUnavailable
from registry.redis_client import redis_client
from registry.secrets import hash_key
from registry.snapshot import SnapshotWatcher
from registry.store import RegistryStore
from tests.fixtures.redis import RedisServer
from tests.fixtures.registry import REGISTRY_SECRET
from tests.fixtures.traffic import until

STORE_TIMEOUT = 0.5


@pytest.fixture
async def private_client(redis_private: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """The gateway's own client: it must survive the restarts these tests make."""
    client, close = redis_client(redis_private.url, max_connections=16, timeout=1.0)
    yield client
    await close()


@pytest.fixture
async def watched(
    private_client: aioredis.Redis,
) -> AsyncIterator[tuple[RegistryStore, SnapshotWatcher]]:
    store = RegistryStore(private_client, REGISTRY_SECRET, timeout=STORE_TIMEOUT)
    watcher = SnapshotWatcher(store, private_client, poll_interval=0.1)
    await watcher.start()
    yield store, watcher
    await watcher.stop()


async def test_snapshot_converges_within_a_second(
    watched: tuple[RegistryStore, SnapshotWatcher],
) -> None:
    store, watcher = watched
    assert watcher.redis_ok
    assert watcher.state.epoch == 0
    await store.create_tenant("acme", actor="root")
    record, api_key = await store.issue_key("acme", actor="root")
    await store.register_prompt_version("acme", "p", system_prompt="hi", actor="root")
    release = await store.create_release("acme", "chat", prompt="p@1", actor="root")
    epoch = await store.epoch()
    assert await watcher.wait_for_epoch(epoch, timeout=1.0)
    state = watcher.state
    assert state.tenant_for_key(hash_key(REGISTRY_SECRET, api_key)) == key_rec(record)
    alias = state.alias("acme", "chat")
    assert alias is not None
    assert alias.stable == release.id
    assert [a.alias for a in state.aliases_of("acme")] == ["chat"]
    adapter, prompt = state.release_parts(state.release("acme", release.id))
    assert adapter is None
    assert prompt is not None
    assert prompt.system_prompt == "hi"
    assert watcher.age_s < 1.0
    assert not watcher.stale


async def test_a_missed_invalidation_is_caught_by_the_poll(
    watched: tuple[RegistryStore, SnapshotWatcher], private_client: aioredis.Redis
) -> None:
    store, watcher = watched
    await private_client.incr(store.keyspace.epoch)  # bumps the epoch without publishing
    assert await watcher.wait_for_epoch(1, timeout=1.0)
    assert not await watcher.wait_for_epoch(99, timeout=0.2)


async def test_redis_killed_state_still_serves_then_resyncs(
    watched: tuple[RegistryStore, SnapshotWatcher], redis_private: RedisServer
) -> None:
    store, watcher = watched
    await store.create_tenant("acme", actor="root")
    _, api_key = await store.issue_key("acme", actor="root")
    assert await watcher.wait_for_epoch(2, timeout=1.0)
    hmac = hash_key(REGISTRY_SECRET, api_key)

    redis_private.kill()
    for call in (store.get_tenant("acme"), store.epoch(), store.create_tenant("b", actor="r")):
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            await call
        assert time.monotonic() - started < STORE_TIMEOUT + 0.3
    assert not await store.ping()
    await until(lambda: not watcher.redis_ok, 2.0, "the watcher seeing Redis gone")
    assert watcher.state.tenant_for_key(hmac) is not None  # still serving the last snapshot

    redis_private.start()
    await until(lambda: watcher.redis_ok, 3.0, "the watcher seeing Redis back")
    assert watcher.state.epoch == 2  # AOF kept everything; nothing regressed
    assert not watcher.regressed
    await store.create_tenant("beta", actor="root")
    assert await watcher.wait_for_epoch(3, timeout=1.5)
    assert "beta" in watcher.state.tenants


async def test_frozen_redis_times_out(
    watched: tuple[RegistryStore, SnapshotWatcher], redis_private: RedisServer
) -> None:
    store, watcher = watched
    redis_private.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            await store.list_tenants()
        assert time.monotonic() - started < STORE_TIMEOUT + 0.3
        await until(lambda: not watcher.redis_ok, 2.0, "the watcher seeing Redis gone")
    finally:
        redis_private.thaw()


async def test_aof_restart_keeps_every_acknowledged_write(
    private_client: aioredis.Redis, redis_private: RedisServer
) -> None:
    store = RegistryStore(private_client, REGISTRY_SECRET, timeout=STORE_TIMEOUT)
    await store.create_tenant("acme", actor="root")
    for i in range(20):
        await store.register_prompt_version("acme", "p", system_prompt=f"v{i}", actor="root")
        await store.create_release("acme", "chat", prompt=f"p@{i + 1}", actor="root")
    before = await store.load_state()
    redis_private.kill()  # SIGKILL: no shutdown save, only the AOF
    redis_private.start()
    fresh = aioredis.Redis.from_url(redis_private.url, socket_timeout=1.0)
    try:  # a new client, as a restarted gateway would have; the old pool holds dead sockets
        after = await RegistryStore(fresh, REGISTRY_SECRET, timeout=STORE_TIMEOUT).load_state()
    finally:
        await fresh.aclose()
    assert after == before
    assert after.epoch == 41
    assert len(after.releases) == 20


async def test_epoch_regression_keeps_the_newer_snapshot(
    watched: tuple[RegistryStore, SnapshotWatcher], private_client: aioredis.Redis
) -> None:
    store, watcher = watched
    await store.create_tenant("acme", actor="root")
    await store.create_tenant("beta", actor="root")
    assert await watcher.wait_for_epoch(2, timeout=1.0)
    await private_client.flushall()  # Redis "lost its data"
    await store.create_tenant("gamma", actor="root")  # epoch 1 < 2
    await until(lambda: watcher.regressed, 2.0, "the regression noticed")
    assert set(watcher.state.tenants) == {"acme", "beta"}
    await watcher.refresh(accept_regression=True)
    assert not watcher.regressed
    assert set(watcher.state.tenants) == {"gamma"}


async def test_watcher_starts_while_redis_is_down(
    private_client: aioredis.Redis, redis_private: RedisServer
) -> None:
    redis_private.kill()
    store = RegistryStore(private_client, REGISTRY_SECRET, timeout=STORE_TIMEOUT)
    watcher = SnapshotWatcher(store, private_client, poll_interval=0.1)
    await watcher.start()
    try:
        assert not watcher.redis_ok
        assert watcher.state.epoch == -1
        assert watcher.state.tenants == {}
        redis_private.start()
        assert await watcher.wait_for_epoch(0, timeout=3.0)
        assert watcher.redis_ok
    finally:
        await watcher.stop()
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("registry-")]
    assert leftovers == []


async def test_three_gateways_apply_each_write_without_a_full_load(
    private_client: aioredis.Redis, redis_private: RedisServer
) -> None:
    """Three watchers (three gateways, a client each) follow every write from its published
    changes alone, and all equal a full load afterwards."""
    clients = [aioredis.Redis.from_url(redis_private.url, socket_timeout=1.0) for _ in range(3)]
    store = RegistryStore(private_client, REGISTRY_SECRET, timeout=STORE_TIMEOUT)
    watchers = [
        SnapshotWatcher(RegistryStore(c, REGISTRY_SECRET, timeout=STORE_TIMEOUT), c,
                        poll_interval=30.0)
        for c in clients
    ]  # fmt: skip
    try:
        for watcher in watchers:
            await watcher.start()
        await store.create_tenant("acme", actor="root")
        record, _ = await store.issue_key("acme", actor="root")
        await store.register_prompt_version("acme", "p", system_prompt="hi", actor="root")
        await store.create_release("acme", "chat", prompt="p@1", actor="root")
        await store.revoke_key("acme", record.key_id, actor="root")
        epoch = await store.epoch()
        full = await store.load_state()
        for watcher in watchers:
            assert await watcher.wait_for_epoch(epoch, timeout=5.0)
            assert watcher.state == full
            assert watcher.full_loads == 1  # the start only
    finally:
        for watcher in watchers:
            await watcher.stop()
        for c in clients:
            await c.aclose()


async def test_a_gap_in_the_epochs_loads_everything(
    private_client: aioredis.Redis, redis_private: RedisServer
) -> None:
    store = RegistryStore(private_client, REGISTRY_SECRET, timeout=STORE_TIMEOUT)
    watcher = SnapshotWatcher(store, private_client, poll_interval=30.0)
    await watcher.start()
    try:
        await store.create_tenant("acme", actor="root")
        assert await watcher.wait_for_epoch(1, timeout=5.0)
        # A write whose message never came (epoch 2), then one that does (epoch 3).
        await private_client.hset(store.keyspace.tenants, "ghost", b'{"id": "ghost"}')
        await private_client.incr(store.keyspace.epoch)
        await store.create_tenant("beta", actor="root")
        assert await watcher.wait_for_epoch(3, timeout=5.0)
        assert set(watcher.state.tenants) == {"acme", "ghost", "beta"}
        assert watcher.full_loads == 2
        assert watcher.state == await store.load_state()
    finally:
        await watcher.stop()


async def test_refresh_catches_up_from_the_changes(
    watched: tuple[RegistryStore, SnapshotWatcher],
) -> None:
    """What the admin routes call after a write: it waits for the write's own change, no reload."""
    store, watcher = watched
    loads = watcher.full_loads
    await store.create_tenant("acme", actor="root")
    await watcher.refresh()
    assert "acme" in watcher.state.tenants
    assert watcher.full_loads == loads


async def test_registries_in_other_databases_of_the_server_do_not_leak_in(
    redis_private: RedisServer,
) -> None:
    """Redis pub/sub ignores databases: each registry publishes on a channel of its own database,
    so a watcher never applies another database's changes (and never skips its own for them)."""
    base = redis_private.url.rsplit("/", 1)[0]
    one = aioredis.Redis.from_url(base + "/1", socket_timeout=1.0)
    two = aioredis.Redis.from_url(base + "/2", socket_timeout=1.0)
    store_one = RegistryStore(one, REGISTRY_SECRET, timeout=STORE_TIMEOUT)
    store_two = RegistryStore(two, REGISTRY_SECRET, timeout=STORE_TIMEOUT)
    watcher = SnapshotWatcher(store_two, two, poll_interval=0.1)
    await watcher.start()
    try:
        for i in range(3):  # database 1 runs ahead of database 2's epochs
            await store_one.create_tenant(f"other{i}", actor="root")
        await store_two.create_tenant("acme", actor="root")
        await until(lambda: "acme" in watcher.state.tenants, 2.0, "acme in the snapshot")
        assert not any(t.startswith("other") for t in watcher.state.tenants)
        assert watcher.state.epoch == 1
    finally:
        await watcher.stop()
        await one.aclose()
        await two.aclose()
