"""The gateway's Redis client (registry/redis_client.py) against a real redis-server restart."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from registry.redis_client import PoolCounts, pool_counts, redis_client
from tests.fixtures.redis import RedisServer

POOL = 8


async def _clients_seen(url: str) -> int:
    """Connections the server holds, the asking one excluded; its own awaited I/O also lets the
    event loop take in every EOF that is waiting on the pooled sockets."""
    probe = aioredis.Redis.from_url(url, socket_timeout=2)
    try:
        me = await probe.client_id()
        return sum(1 for c in await probe.client_list() if int(c["id"]) != me)
    finally:
        await probe.aclose()


@pytest.mark.timeout(30)
async def test_every_pooled_connection_survives_a_redis_restart(
    redis_private: RedisServer,
) -> None:
    client, close = redis_client(redis_private.url, max_connections=POOL, timeout=1.0)
    try:
        assert all(await asyncio.gather(*(client.ping() for _ in range(POOL))))
        assert await _clients_seen(redis_private.url) == POOL
        assert pool_counts(client) == PoolCounts(idle=POOL, in_use=0, limit=POOL)

        redis_private.kill()
        redis_private.start()
        assert await _clients_seen(redis_private.url) == 0  # every pooled socket is dead

        # Each call must find its connection closed and open a new one, not fail on it.
        results = await asyncio.gather(
            *(client.ping() for _ in range(POOL)), return_exceptions=True
        )
        assert results == [True] * POOL
        assert await _clients_seen(redis_private.url) == pool_counts(client).idle == POOL
    finally:
        await close()


@pytest.mark.timeout(30)
async def test_pool_counts_show_a_connection_taken_and_not_returned(
    redis_private: RedisServer,
) -> None:
    client, close = redis_client(redis_private.url, max_connections=4, timeout=1.0)
    try:
        pubsub = client.pubsub()
        await pubsub.subscribe("loragate:test")  # holds its connection until closed
        assert await client.ping()
        assert pool_counts(client) == PoolCounts(idle=1, in_use=1, limit=4)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        assert pool_counts(client) == PoolCounts(idle=2, in_use=0, limit=4)
    finally:
        await close()
