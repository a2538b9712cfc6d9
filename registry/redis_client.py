"""Redis clients from one URL: `redis://`, `rediss://`, `unix://`, or `redis+sentinel://` for a
master that Redis Sentinel watches and fails over.

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?sentinel_password=x]

With Sentinel, every new connection asks a sentinel for the current master, and a connection to a
master that was demoted (READONLY) or died is dropped, so the gateway follows a failover by itself:
calls in the gap fail fast (the caller's timeout turns them into 503s), then land on the new master.
The password in the URL is the data nodes'; `sentinel_password` the sentinels' own, if any.

    client, close = redis_client("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/loragate/0", ...)
    await client.ping()
    await close()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.maint_notifications import MaintNotificationsConfig
from redis.observability.attributes import DB_CLIENT_CONNECTION_STATE, ConnectionState

from registry.redis_url import is_sentinel, parse_sentinel_url


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master discovery with the blocking pool's waiting for a free connection."""


Close = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PoolCounts:
    """A client's pool right now. `idle` entries may be closed sockets that reconnect on use."""

    idle: int
    in_use: int
    limit: int


def pool_counts(client: aioredis.Redis) -> PoolCounts:
    pool = client.connection_pool
    counted = pool.get_connection_count()
    by_state = {str(attrs[DB_CLIENT_CONNECTION_STATE]): n for n, attrs in counted}
    return PoolCounts(
        idle=by_state.get(ConnectionState.IDLE.value, 0),
        in_use=by_state.get(ConnectionState.USED.value, 0),
        limit=pool.max_connections,
    )


def redis_client(
    url: str, *, max_connections: int, timeout: float, health_check_interval: float = 5
) -> tuple[aioredis.Redis, Close]:
    """A client over a bounded pool that makes callers wait (up to `timeout`) for a connection,
    and the coroutine function that closes it (and its sentinel connections)."""
    common: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": timeout,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": health_check_interval,
        # redis-py's default ("auto") turns off the pool's check that a connection it hands out
        # is still open, so after a Redis restart or failover every pooled connection failed one
        # call. Maintenance notifications are a Redis Enterprise/Cloud feature we do not use.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if not is_sentinel(url):
        client = aioredis.Redis.from_pool(  # the client owns the pool: aclose() closes it
            BlockingConnectionPool.from_url(url, **common)
        )
        return client, client.aclose
    spec = parse_sentinel_url(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(spec.sentinels),
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "password": spec.sentinel_password,
        },
    )
    client = sentinel.master_for(
        spec.service,
        connection_pool_class=_BlockingSentinelPool,
        db=spec.db,
        username=spec.username,
        password=spec.password,
        **common,
    )

    async def close() -> None:
        try:
            await client.aclose()
        finally:
            await sentinel.aclose()

    return client, close
