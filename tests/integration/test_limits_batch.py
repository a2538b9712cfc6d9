"""Batched limits calls against a real redis-server: the admissions and settlements of one
event-loop tick share one pipelined round trip (registry/limits_batch.py), with per-request
answers, one failure path and idempotent replay; three limiters stand for three gateways.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.errors import ApiError
from gateway.limits.limiter import Limiter, Reservation
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Price
from registry.limits import (
    LimitExceeded,
    LimitStore,
    LimitsUnavailable,
    Quota,
    Remaining,
    Settlement,
)
from registry.models import Budget, Limits, Tenant
from tests.fixtures.redis import RedisServer
from tests.fixtures.traffic import until

PRICE = Price(prompt_per_1k=1.0, completion_per_1k=2.0)


class Fleet:
    """Limiters of simulated gateway processes, each on its own client (its own pool)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clients: list[aioredis.Redis] = []
        self.limiters: list[Limiter] = []

    def store(self, *, timeout: float = 2.0, **kw: Any) -> LimitStore:
        client = aioredis.Redis.from_url(
            self.url, socket_timeout=2.0, socket_connect_timeout=2.0, retry_on_timeout=False
        )
        self.clients.append(client)
        return LimitStore(client, timeout=timeout, **kw)

    def limiter(self, *, timeout: float = 2.0, **kw: Any) -> Limiter:
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry, currency="USD", engines=[])
        metrics.set_label_universe({"acme", "globex"}, set(), set())
        limiter = Limiter(self.store(timeout=timeout), metrics, lambda plan: PRICE, **kw)
        self.limiters.append(limiter)
        return limiter

    async def close(self) -> None:
        for limiter in self.limiters:
            await limiter.stop(within_s=1.0)
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def fleet(redis_client: aioredis.Redis, redis_server: RedisServer) -> AsyncIterator[Fleet]:
    f = Fleet(redis_server.url)
    yield f
    await f.close()


@pytest.fixture
async def private_fleet(redis_private: RedisServer) -> AsyncIterator[Fleet]:
    f = Fleet(redis_private.url)
    yield f
    await f.close()


def tenant(name: str = "acme", **limits: Any) -> Tenant:
    return Tenant(id=name, limits=Limits(**limits))


async def admit(limiter: Limiter, t: Tenant, rid: str, prompt: int = 10) -> Reservation | ApiError:
    try:
        return await limiter.admit(t, rid, prompt_tokens=prompt, max_tokens=10)
    except ApiError as exc:
        return exc


def trips(limiter: Limiter) -> int:
    return limiter._store._batch.round_trips


# -- one tick, one round trip, an answer per request -------------------------------------------


async def test_one_tick_mixing_admitted_and_refused_is_one_round_trip(fleet: Fleet) -> None:
    limiter = fleet.limiter()
    conc = tenant("acme", max_concurrency=3)
    rpm = tenant("globex", requests_per_minute=2)
    warm = await limiter.admit(
        tenant("warm", max_concurrency=1), "w", prompt_tokens=1, max_tokens=1
    )
    task = limiter.release(warm)  # both scripts loaded: no NOSCRIPT resend in what is counted
    assert task is not None
    await task
    before = trips(limiter)
    # Started together: every admission reaches the store in the same loop iteration.
    results = await asyncio.gather(
        *(admit(limiter, conc, f"c{i}") for i in range(6)),
        *(admit(limiter, rpm, f"r{i}") for i in range(4)),
    )
    assert trips(limiter) - before == 1
    # Scripts run in submission order, each atomically: the first ones of each tenant get in.
    kinds = ["ok" if isinstance(r, Reservation) else r.code for r in results]
    assert kinds == ["ok"] * 3 + ["concurrency_limited"] * 3 + ["ok"] * 2 + ["rate_limited"] * 2
    admitted = [r for r in results if isinstance(r, Reservation)]
    assert all(r.mode == "remote" for r in admitted)
    assert [r.headers["x-ratelimit-remaining-requests"] for r in admitted[3:]] == ["1", "0"]
    refused = [r for r in results if isinstance(r, ApiError)]
    assert all(r.status == 429 and r.response_headers()["retry-after"] for r in refused)
    assert not limiter.degraded

    # Their settlements, issued in one tick, go out together too (one task for all).
    before = trips(limiter)
    tasks = {limiter.settle(r, 5, 5, 0.01) for r in admitted}
    assert len(tasks) == 1
    task = tasks.pop()
    assert task is not None
    await asyncio.wait_for(task, 10)
    assert trips(limiter) - before == 1
    usage = await limiter.usage(conc)
    assert usage["in_flight"] == 0
    again = await asyncio.gather(*(admit(limiter, conc, f"d{i}") for i in range(3)))
    assert all(isinstance(r, Reservation) for r in again)


async def test_a_script_error_fails_only_its_own_call(
    fleet: Fleet, redis_client: aioredis.Redis
) -> None:
    store = fleet.store()
    broken = store.keys("broken").slots
    await redis_client.set(broken, "not a zset")  # WRONGTYPE inside that call's script only
    quota = Quota(max_concurrency=2)
    results = await asyncio.gather(
        store.admit("acme", quota, "a1", tokens=1, cost=0.0),
        store.admit("broken", quota, "b1", tokens=1, cost=0.0),
        store.admit("acme", quota, "a2", tokens=1, cost=0.0),
        store.admit("acme", quota, "a3", tokens=1, cost=0.0),
        return_exceptions=True,
    )
    assert store._batch.round_trips == 1
    assert isinstance(results[0], Remaining)
    assert isinstance(results[1], LimitsUnavailable)
    assert isinstance(results[2], Remaining)
    assert isinstance(results[3], LimitExceeded)
    assert results[3].code == "concurrency_limited"


async def test_scripts_reloaded_after_a_flush(fleet: Fleet, redis_client: aioredis.Redis) -> None:
    limiter = fleet.limiter()
    t = tenant(max_concurrency=5)
    first = await limiter.admit(t, "a", prompt_tokens=1, max_tokens=1)
    await redis_client.script_flush()  # what a restarted Redis looks like to EVALSHA
    results = await asyncio.gather(*(admit(limiter, t, f"b{i}") for i in range(3)))
    assert all(isinstance(r, Reservation) and r.mode == "remote" for r in results)
    assert not limiter.degraded
    task = limiter.settle(first, 1, 1, 0.0)
    assert task is not None
    await task
    assert (await limiter.usage(t))["in_flight"] == 3


async def test_settle_many_is_idempotent_per_request(fleet: Fleet) -> None:
    store = fleet.store()
    quota = Quota(budget=10.0, period="day")
    for rid in ("a", "b"):
        await store.admit("acme", quota, rid, tokens=10, cost=0.5)
    items = [
        Settlement("acme", "day", "a", 20, 0.25),
        Settlement("acme", "day", "b", 20, 0.25),
        Settlement("acme", "day", "a", 20, 0.25),  # the same request twice in one batch
        Settlement("acme", "day", "c", 20, 0.25),  # never admitted here (a local admission)
    ]
    assert await store.settle_many(items) == [1, 1, 2, 0]
    assert await store.settle_many(items) == [2, 2, 2, 2]  # a replayed batch charges nothing
    usage = await store.usage("acme", "day")
    assert usage.spent == pytest.approx(0.75)
    assert usage.reserved == pytest.approx(0.0, abs=1e-9)
    assert usage.in_flight == 0
    assert await store.settle_many([]) == []


# -- failure: the batch fails as one call did ---------------------------------------------------


async def test_a_failed_batch_falls_back_like_one_failed_call(
    private_fleet: Fleet, redis_private: RedisServer
) -> None:
    a = private_fleet.limiter(timeout=0.25, retry_s=0.2)
    b = private_fleet.limiter(timeout=0.25, retry_s=0.2)
    assert await a.heartbeat()
    assert await b.heartbeat()
    assert await a.heartbeat()
    assert a.live_gateways == 2
    t = tenant(max_concurrency=4, budget=Budget(amount=1.0, period="month"))
    warm = await a.admit(t, "warm", prompt_tokens=10, max_tokens=10)
    task = a.settle(warm, 10, 10, 0.03)
    assert task is not None
    await task

    redis_private.kill()
    started = time.monotonic()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*(admit(a, t, f"d{i}") for i in range(6)))
    assert time.monotonic() - started < 3  # one failed round trip for the whole tick
    assert a.degraded
    held = [r for r in results if isinstance(r, Reservation)]
    assert len(held) == 2  # this process's share: max_concurrency 4 over 2 live gateways
    assert all(h.mode == "local" for h in held)
    assert {r.code for r in results if isinstance(r, ApiError)} == {"concurrency_limited"}
    for i, h in enumerate(held):
        a.settle(h, 10, 10, 0.05 + i * 0.01)
    await a.drain()
    # Queued: the two local spends, and the give-backs of the six admissions that may have been
    # recorded before the connection failed.
    assert a.pending == 8

    redis_private.start()
    await until(a.heartbeat, 5.0, "the limiter seeing Redis again")
    assert a.pending == 0
    assert not a.degraded
    usage = await a.usage(t)
    assert usage["spent"] == pytest.approx(0.03 + 0.05 + 0.06)
    assert usage["in_flight"] == 0
    assert usage["reserved"] == pytest.approx(0.0, abs=1e-9)


async def test_a_frozen_redis_costs_one_timeout_per_batch(
    private_fleet: Fleet, redis_private: RedisServer
) -> None:
    store = private_fleet.store(timeout=0.2)
    quota = Quota(max_concurrency=100)
    await store.admit("acme", quota, "warm", tokens=1, cost=0.0)
    redis_private.freeze()
    try:
        started = time.monotonic()
        async with asyncio.timeout(5):
            results = await asyncio.gather(
                *(store.admit("acme", quota, f"f{i}", tokens=1, cost=0.0) for i in range(50)),
                store.settle_many([Settlement("acme", "month", "warm", 1, 0.0)]),
                return_exceptions=True,
            )
        elapsed = time.monotonic() - started
    finally:
        redis_private.thaw()
    assert all(isinstance(r, LimitsUnavailable) for r in results), results
    assert "timed out" in str(results[0])
    assert elapsed < 1.5  # the hard timeout holds for the batch as a whole


async def test_replay_goes_in_batches_and_never_charges_twice(
    private_fleet: Fleet, redis_private: RedisServer
) -> None:
    limiter = private_fleet.limiter(timeout=0.25, retry_s=30)  # one failed try, then local
    t = tenant(budget=Budget(amount=1000.0, period="day"))
    assert await limiter.heartbeat()
    redis_private.kill()
    held = [await limiter.admit(t, f"q{i}", prompt_tokens=1, max_tokens=1) for i in range(300)]
    assert all(h.mode == "local" for h in held)
    for h in held:
        limiter.settle(h, 1, 1, 0.01)
    await limiter.drain()
    assert limiter.pending == 301  # the 300 spends, and the give-back of the one failed try
    queued = list(limiter._pending)

    redis_private.start()
    await until(limiter.heartbeat, 5.0, "the limiter seeing Redis again")
    assert limiter.pending == 0
    assert (await limiter.usage(t))["spent"] == pytest.approx(3.0)
    # The answers of a replay were lost: the same settlements come again, and charge nothing.
    limiter._pending.extend(queued)
    assert await limiter.reconcile() == 301
    assert (await limiter.usage(t))["spent"] == pytest.approx(3.0)


# -- three gateways -----------------------------------------------------------------------------


async def test_three_gateways_batching_hold_one_exact_limit(fleet: Fleet) -> None:
    gateways = [fleet.limiter() for _ in range(3)]
    t = tenant(max_concurrency=5, requests_per_minute=40, budget=Budget(amount=1.0, period="day"))
    barrier = asyncio.Barrier(60)

    async def one(i: int) -> tuple[Limiter, Reservation | ApiError]:
        await barrier.wait()
        limiter = gateways[i % 3]
        return limiter, await admit(limiter, t, f"r{i}")

    async with asyncio.timeout(30):
        outcomes = await asyncio.gather(*(one(i) for i in range(60)))
    held = [(lim, o) for lim, o in outcomes if isinstance(o, Reservation)]
    assert len(held) == 5
    assert {o.code for _, o in outcomes if isinstance(o, ApiError)} == {"concurrency_limited"}
    assert all(g.degraded is False for g in gateways)
    for lim, h in held:
        lim.settle(h, 5, 5, 0.001)
    for g in gateways:
        await g.drain()

    usage = await gateways[0].usage(t)
    assert usage["in_flight"] == 0
    assert usage["spent"] == pytest.approx(0.005)

    # Requests per minute across the three, in waves of 12 (each gateway batching its 4).
    rpm = tenant("globex", requests_per_minute=40)
    kinds: list[str] = []
    for wave in range(4):
        results = await asyncio.gather(
            *(admit(gateways[i % 3], rpm, f"w{wave}-{i}") for i in range(12))
        )
        for i, r in enumerate(results):
            if isinstance(r, Reservation):
                gateways[i % 3].release(r)
        kinds += ["ok" if isinstance(r, Reservation) else r.code for r in results]
    assert kinds.count("ok") == 40
    assert kinds.count("rate_limited") == 8
    for g in gateways:
        await g.drain()
    usage = await gateways[0].usage(rpm)
    assert usage["requests_last_minute"] == 40
    assert usage["in_flight"] == 0


# -- the admission script's window answers (one pass, sorted only on refusal) -------------------


async def test_window_answers_from_unsorted_buckets(
    fleet: Fleet, redis_client: aioredis.Redis
) -> None:
    store = fleet.store()
    k = store.keys("acme")
    now = int((await redis_client.time())[0])
    # Written out of order, one of them already outside the 60 s window.
    await redis_client.hset(k.requests, mapping={now - 5: 2, now - 50: 3, now - 70: 9, now - 30: 4})
    await redis_client.hset(k.tokens, mapping={now - 20: 100, now - 40: 50})

    ok = await store.admit("acme", Quota(requests_per_minute=100), "a", tokens=10, cost=0.0)
    assert ok.requests_used == 10  # 2 + 3 + 4 and this one; the expired bucket does not count
    assert ok.requests_reset_s in (9.0, 10.0)  # the oldest bucket (now - 50) leaves then
    assert ok.tokens_used == 160
    assert ok.tokens_reset_s in (19.0, 20.0)
    assert str(now - 70).encode() not in await redis_client.hkeys(k.requests)

    with pytest.raises(LimitExceeded) as one_bucket:  # 10 used of 10: the oldest 3 free one
        await store.admit("acme", Quota(requests_per_minute=10), "b", tokens=0, cost=0.0)
    assert one_bucket.value.retry_after in (9.0, 10.0)
    with pytest.raises(LimitExceeded) as two_buckets:  # of 7: 3 + 4 must leave (now - 30)
        await store.admit("acme", Quota(requests_per_minute=7), "c", tokens=0, cost=0.0)
    assert two_buckets.value.retry_after in (29.0, 30.0)
    with pytest.raises(LimitExceeded) as tokens:  # 160 of 190 + 40: the (now - 40) 50 must go
        await store.admit("acme", Quota(tokens_per_minute=190), "d", tokens=40, cost=0.0)
    assert tokens.value.retry_after in (19.0, 20.0)
    assert tokens.value.code == "rate_limited"
