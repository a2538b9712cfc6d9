"""Fleet numbers in Redis: each gateway process's canary windows and engine busy intervals.

Why fields with their own lease instead of the limits heartbeat: the limits may live on another
Redis (`limits_redis_url`), and a gateway's canary numbers must leave the sum exactly when it stops
publishing them. Every field carries the expiry its writer set (Redis `TIME` + lease, so gateway
clocks do not matter); readers skip and delete lapsed fields. Bounded cost: one hash per alias
with a canary in progress and per (engine replica, attribution period); one field per live gateway
process; nothing per tenant.

    store = FleetStore(redis, timeout=1.0)
    payloads = await store.exchange_canary("gw-1", 5.0, [("acme", "support", b"...")])
    await store.publish_busy("gw-1", [("engine-0", 345678, b"120|0,950")], ttl_s=60)
    rows = await store.read_busy([("engine-0", 345678)])   # [[b"120|0,950", b"80|400,1000"]]
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from registry.errors import RegistryUnavailable
from registry.keyspace import DEFAULT_PREFIX, Keyspace


class FleetStore:
    def __init__(self, redis: Redis, *, timeout: float = 1.0, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = redis
        self._timeout = timeout
        self._keyspace = Keyspace(prefix)
        lua = resources.files("registry").joinpath("fleet_canary.lua").read_text()
        self._canary = redis.register_script(lua)

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except TimeoutError as exc:
            raise RegistryUnavailable(f"fleet store timed out after {self._timeout}s") from exc
        except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
            raise RegistryUnavailable(f"fleet store unreachable: {type(exc).__name__}") from exc

    async def exchange_canary(
        self, process_id: str, lease_s: float, entries: Sequence[tuple[str, str, bytes]]
    ) -> list[list[bytes]]:
        """Publish this process's payload per (tenant, alias) (b"" only reads) and return the
        live payloads of every process, per entry, in one pipelined round trip."""
        if not entries:
            return []
        lease_ms = max(1, int(lease_s * 1000))
        async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
            for tenant, alias, payload in entries:
                key = self._keyspace.fleet_canary(tenant, alias)
                await self._canary(keys=[key], args=[process_id, lease_ms, payload], client=pipe)
            out = await pipe.execute()
        return [list(rows) for rows in out]

    async def publish_busy(
        self, process_id: str, rows: Sequence[tuple[str, int, bytes]], *, ttl_s: float
    ) -> None:
        """Per (replica, period): this process's tokens and busy intervals, written once."""
        if not rows:
            return
        async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
            for replica, period, value in rows:
                key = self._keyspace.fleet_busy(replica, period)
                pipe.hset(key, process_id, value)
                pipe.expire(key, max(1, int(ttl_s)))
            await pipe.execute()

    async def read_busy(self, cells: Sequence[tuple[str, int]]) -> list[list[bytes]]:
        """Every process's row of each (replica, period)."""
        if not cells:
            return []
        async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
            for replica, period in cells:
                pipe.hvals(self._keyspace.fleet_busy(replica, period))
            out = await pipe.execute()
        return [list(rows) for rows in out]
