"""Redis connection pools on /metrics, read at scrape time (nothing on the request path).

    metrics.watch_redis_pool("registry", lambda: pool_counts(redis))   # GatewayMetrics owns one

`loragate_redis_pool_connections{pool, state}` is the pool's idle and in-use connections and
`loragate_redis_pool_max_connections{pool}` its cap. In use at the cap means callers are waiting
for a connection (`LORAGATE_REDIS_MAX_CONNECTIONS`); in use that never comes back down at idle
means a connection was taken and not returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class PoolCounts(Protocol):
    """registry.redis_client.PoolCounts (this room imports no Redis client)."""

    @property
    def idle(self) -> int: ...
    @property
    def in_use(self) -> int: ...
    @property
    def limit(self) -> int: ...


class RedisPoolMetrics(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._pools: dict[str, Callable[[], PoolCounts]] = {}
        registry.register(self)

    def watch(self, name: str, counts: Callable[[], PoolCounts]) -> None:
        self._pools[name] = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        connections = GaugeMetricFamily(
            "loragate_redis_pool_connections",
            "Connections of a Redis pool by state (idle, in_use).",
            labels=("pool", "state"),
        )
        limit = GaugeMetricFamily(
            "loragate_redis_pool_max_connections",
            "The most connections a Redis pool opens; callers wait beyond it.",
            labels=("pool",),
        )
        for name, counts in self._pools.items():
            now = counts()
            connections.add_metric((name, "idle"), now.idle)
            connections.add_metric((name, "in_use"), now.in_use)
            limit.add_metric((name,), now.limit)
        yield connections
        yield limit
