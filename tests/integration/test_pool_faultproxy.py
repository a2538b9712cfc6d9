"""The fault proxy itself, in front of the session's real redis-server (it is protocol-agnostic):
each fault does what the pool and limits tests rely on, and `clear()` restores a clean wire."""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
import time
from functools import partial

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fixtures.faultproxy import FaultProxy, FaultProxyFactory
from tests.fixtures.redis import RedisServer
from tests.fixtures.traffic import wait_for


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


def _accepted_at_least(proxy: FaultProxy, n: int) -> bool:
    return proxy.accepted >= n


@pytest.mark.parametrize("refuse", [False, True])
def test_stop_under_a_connection_storm_closes_every_socket(
    redis_server: RedisServer, refuse: bool
) -> None:
    """A gateway probes its engines every 0.25 s, so a test's proxy is stopped while connections
    arrive. Every socket must be closed when stop() returns: CI once failed on one left open (an
    accept in flight when the server closed, which Python 3.11 leaks). ResourceWarnings are errors
    and the autouse collection after each test surfaces any left behind."""
    for _ in range(10):
        proxy = FaultProxy(redis_server.port)
        proxy.start()
        proxy.set(refuse=refuse)
        stop = threading.Event()

        def storm(port: int = proxy.port, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2) as s,
                ):
                    s.sendall(b"PING\r\n")

        threads = [threading.Thread(target=storm) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(partial(_accepted_at_least, proxy, 20), 10, "20 accepted connections")
            proxy.stop()
        finally:
            stop.set()
            for t in threads:
                t.join(5)
        assert not any(t.is_alive() for t in threads)
        del proxy
        gc.collect()  # here, inside the loop: a leak fails on the round that made it
