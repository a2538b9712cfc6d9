"""The fault proxy itself, in front of the session's real redis-server (it is protocol-agnostic):
each fault does what the pool and limits tests rely on, and `clear()` restores a clean wire."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fixtures.faultproxy import FaultProxyFactory
from tests.fixtures.redis import RedisServer


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),  # one try: the fault must surface
    )  # fmt: skip


def test_latency_freeze_reset_refuse_and_clear(
    redis_server: RedisServer, fault_proxy: FaultProxyFactory
) -> None:
    proxy = fault_proxy(redis_server.port)
    client = _client(proxy.port)
    try:
        assert client.ping()
        proxy.set(latency_s=0.2)
        started = time.monotonic()
        assert client.ping()
        assert time.monotonic() - started >= 0.4  # one delayed chunk each way

        proxy.set(latency_s=0.0, freeze="down")
        with pytest.raises(redis.TimeoutError):
            client.ping()
        proxy.clear()
        client.connection_pool.disconnect()
        assert client.ping()

        proxy.set(reset_on=b"PING")
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert proxy.resets == 1
        proxy.set(reset_on=None, refuse=True)
        client.connection_pool.disconnect()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        proxy.clear()
        assert client.ping()
        proxy.set(slice_bytes=1)
        assert client.set("faultproxy:k", "v" * 64)
        assert client.get("faultproxy:k") == b"v" * 64
    finally:
        client.delete("faultproxy:k")
        client.close()
