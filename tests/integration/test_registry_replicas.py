"""Registry writes behind replication (issue 21): `WAIT` makes an acknowledgement mean "on a
replica too", and a master that cannot replicate answers RegistryUnavailable (503), never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from adapters.ports import free_port
from registry.errors import RegistryUnavailable
from registry.store import RegistryStore
from tests.fixtures.redis import RedisServer

SECRET = b"replicas-test"


@pytest.fixture
async def lone_master(tmp_path: Path) -> AsyncIterator[aioredis.Redis]:
    """A master with `min-replicas-to-write 1` and no replica: it refuses every write."""
    server = RedisServer(
        port=free_port(), workdir=tmp_path, extra_args=("--min-replicas-to-write", "1")
    )
    server.start()
    client = aioredis.Redis(port=server.port, socket_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()
        server.stop()


async def test_a_write_no_replica_confirms_is_not_acknowledged(
    redis_client: aioredis.Redis,
) -> None:
    store = RegistryStore(redis_client, SECRET, timeout=2.0, wait_replicas=1, wait_timeout_ms=50)
    with pytest.raises(RegistryUnavailable, match="0 of 1 replica"):
        await store.create_tenant("acme", actor="test")


async def test_writes_wait_for_nothing_without_replicas_asked(
    redis_client: aioredis.Redis,
) -> None:
    store = RegistryStore(redis_client, SECRET, timeout=2.0, wait_replicas=0)
    await store.create_tenant("acme", actor="test")
    assert "acme" in (await store.load_state()).tenants


async def test_a_master_without_its_replicas_is_unavailable_not_broken(
    lone_master: aioredis.Redis,
) -> None:
    for wait in (0, 1):
        store = RegistryStore(lone_master, SECRET, timeout=2.0, wait_replicas=wait)
        with pytest.raises(RegistryUnavailable, match="no writable master"):
            await store.create_tenant("acme", actor="test")
    assert "acme" not in (await RegistryStore(lone_master, SECRET).load_state()).tenants
