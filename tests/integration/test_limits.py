"""Tenant limits against a real redis-server: bursts, budgets, release, two processes, Redis loss.

Each test builds its own `Limiter`s (one per simulated gateway process) on a flushed database of
the session Redis, or on a private server when it kills or freezes Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.errors import ApiError
from gateway.limits.limiter import Limiter, Reservation
from gateway.limits.quota import (
    LocalCounts,
    estimate_prompt_tokens,
    format_reset,
    local_admission,
    ratelimit_headers,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Price
from registry.limits import LimitStore, Quota, Remaining, period_window
from registry.models import Budget, Limits, Tenant
from tests.fixtures.redis import RedisServer
from tests.fixtures.traffic import until

PRICE = Price(prompt_per_1k=1.0, completion_per_1k=2.0)  # 1 token ~ 0.001-0.002
TENANTS = {"acme", "globex"}

LimiterFactory = Callable[..., Limiter]


def tenant(name: str = "acme", **limits: Any) -> Tenant:
    return Tenant(id=name, limits=Limits(**limits))


def new_metrics() -> tuple[GatewayMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, currency="USD", engines=[])
    metrics.set_label_universe(TENANTS, set(), set())
    return metrics, registry


def in_flight(registry: CollectorRegistry, name: str = "acme") -> float:
    return registry.get_sample_value("loragate_in_flight_requests", {"tenant": name}) or 0.0


async def _factory(redis_url: str, **store_kw: Any) -> AsyncIterator[LimiterFactory]:
    """Limiters with a 2 s store timeout by default: bursts of 100 on a shared 2-core box."""
    clients: list[aioredis.Redis] = []
    limiters: list[Limiter] = []

    def make(metrics: GatewayMetrics | None = None, *, timeout: float = 2.0, **kw: Any) -> Limiter:
        client = aioredis.Redis.from_url(
            redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, retry_on_timeout=False
        )
        clients.append(client)
        store = LimitStore(client, timeout=timeout, **store_kw)
        limiter = Limiter(store, metrics or new_metrics()[0], lambda plan: PRICE, **kw)
        limiters.append(limiter)
        return limiter

    yield make
    for limiter in limiters:
        await limiter.stop(within_s=1.0)
    for client in clients:
        await client.aclose()


@pytest.fixture
async def limiters(redis_client: aioredis.Redis, redis_server: RedisServer) -> Any:
    """Limiters on the flushed session database (the `redis_client` fixture flushes it)."""
    async for make in _factory(redis_server.url):
        yield make


async def admit_or_none(
    limiter: Limiter, t: Tenant, rid: str, prompt: int = 10, max_tokens: int = 10
) -> Reservation | ApiError:
    try:
        return await limiter.admit(t, rid, prompt_tokens=prompt, max_tokens=max_tokens)
    except ApiError as exc:
        return exc


# -- pure parts ---------------------------------------------------------------------------------


def test_format_reset_and_headers() -> None:
    assert [format_reset(s) for s in (0, 0.25, 1, 12.2, 90)] == [
        "0s",
        "250ms",
        "1s",
        "13s",
        "1m30s",
    ]
    quota = Quota(requests_per_minute=10, tokens_per_minute=1000)
    headers = ratelimit_headers(quota, Remaining(requests_used=3, requests_reset_s=20,
                                                 tokens_used=1200, tokens_reset_s=0.5))  # fmt: skip
    assert headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "7",
        "x-ratelimit-reset-requests": "20s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "500ms",
    }
    assert ratelimit_headers(Quota(max_concurrency=2), Remaining()) == {}


def test_period_window_is_utc_calendar() -> None:
    # 2026-02-28 23:00:00 UTC
    now = 1_772_319_600.0
    assert period_window("day", now) == ("d20260228", 3600.0)
    assert period_window("month", now) == ("m202602", 3600.0)
    assert period_window("month", now + 7200)[0] == "m202603"


def test_prompt_estimate_overestimates_bytes() -> None:
    text = "What is the capital of France?"
    estimate = estimate_prompt_tokens([{"role": "user", "content": text}])
    assert estimate >= len(text) // 4
    assert estimate_prompt_tokens([]) == 3


def test_local_admission_enforces_this_process_share() -> None:
    """While Redis is away each of N gateways admits `limit // N` (at least 1) and budget / N."""
    now = 1_772_319_600.0
    local = LocalCounts()
    rpm = Quota(requests_per_minute=10)
    for _ in range(5):  # 2 gateways: a share of 5 per minute
        assert local_admission(rpm, local, 2, now, 10, 0.0)[1] is None
        local.requests.add(int(now), 1)
    remaining, refusal = local_admission(rpm, local, 2, now + 1, 10, 0.0)
    assert refusal == ("rate_limited", 59.0)  # the first bucket leaves the window then
    assert remaining.requests_used == 10  # reported as the whole fleet's use
    assert local_admission(rpm, local, 1, now + 1, 10, 0.0)[1] is None  # alone: all 10

    busy = LocalCounts(in_flight=1)
    assert local_admission(Quota(max_concurrency=3), busy, 2, now, 1, 0.0)[1] == (
        "concurrency_limited", 1.0)  # fmt: skip
    assert local_admission(Quota(max_concurrency=3), busy, 1, now, 1, 0.0)[1] is None

    tpm = Quota(tokens_per_minute=100)
    assert local_admission(tpm, LocalCounts(), 1, now, 101, 0.0)[1] == ("rate_limited", 60.0)

    budget = Quota(budget=1.0, period="day")
    spent = LocalCounts(budget_left=0.5, degraded_spent=0.2)
    assert local_admission(budget, spent, 1, now, 1, 0.25)[1] is None
    refusal = local_admission(budget, spent, 2, now, 1, 0.1)[1]  # share 0.25 < 0.2 + 0.1
    assert refusal == ("budget_exceeded", 3600.0)  # until 00:00 UTC


# -- concurrency --------------------------------------------------------------------------------


async def test_burst_of_100_never_holds_more_than_5(limiters: LimiterFactory) -> None:
    metrics, registry = new_metrics()
    limiter = limiters(metrics)
    t = tenant(max_concurrency=5)
    barrier = asyncio.Barrier(100)
    gate = asyncio.Event()
    held = 0
    peak = 0

    async def one(i: int) -> str:
        nonlocal held, peak
        await barrier.wait()
        result = await admit_or_none(limiter, t, f"r{i}")
        if isinstance(result, ApiError):
            assert result.status == 429
            assert result.code == "concurrency_limited"
            return result.code
        held += 1
        peak = max(peak, held)
        try:
            await gate.wait()
        finally:
            held -= 1
            limiter.release(result)
        return "ok"

    async with asyncio.timeout(30):
        tasks = [asyncio.create_task(one(i)) for i in range(100)]
        pending = set(tasks)
        while len(pending) > 5:  # the 95 refusals come back by themselves
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        assert in_flight(registry) == 5
        gate.set()
        results = await asyncio.gather(*tasks)
        await limiter.drain()
    assert results.count("ok") == 5
    assert peak == 5
    assert in_flight(registry) == 0
    assert registry.get_sample_value(
        "loragate_limit_rejections_total", {"tenant": "acme", "code": "concurrency_limited"}
    ) == 95  # fmt: skip
    usage = await limiter.usage(t)
    assert usage["in_flight"] == 0


async def test_waves_of_short_requests_never_exceed_the_limit(limiters: LimiterFactory) -> None:
    limiter = limiters()
    t = tenant(max_concurrency=5)
    barrier = asyncio.Barrier(100)
    held = 0
    peak = 0
    admitted = 0

    async def one(i: int) -> None:
        nonlocal held, peak, admitted
        await barrier.wait()
        for attempt in range(20):
            result = await admit_or_none(limiter, t, f"r{i}-{attempt}")
            if isinstance(result, Reservation):
                held += 1
                admitted += 1
                peak = max(peak, held)
                await asyncio.sleep(0)  # yield while holding the slot
                held -= 1
                task = limiter.settle(result, 5, 5, 0.0)
                if task is not None:
                    await task
                return

    async with asyncio.timeout(60):
        await asyncio.gather(*(one(i) for i in range(100)))
    assert peak <= 5
    assert admitted >= 5


# -- release ------------------------------------------------------------------------------------


async def test_release_frees_at_once_and_survives_cancellation(limiters: LimiterFactory) -> None:
    metrics, registry = new_metrics()
    limiter = limiters(metrics)
    t = tenant(max_concurrency=1)
    first = await limiter.admit(t, "a", prompt_tokens=1, max_tokens=1)
    refused = await admit_or_none(limiter, t, "b")
    assert isinstance(refused, ApiError)
    assert refused.code == "concurrency_limited"
    assert refused.response_headers()["retry-after"] == "1"

    task = limiter.release(first)
    assert in_flight(registry) == 0  # local state is freed synchronously
    assert task is not None
    await asyncio.wait_for(task, 2)
    assert limiter.release(first) is None  # idempotent

    # A request cancelled while it holds its slot frees it in its `finally`.
    started = asyncio.Event()

    async def handler() -> None:
        handle = await limiter.admit(t, "c", prompt_tokens=1, max_tokens=1)
        try:
            started.set()
            await asyncio.Event().wait()  # the engine call that never returns
        finally:
            limiter.release(handle)

    running = asyncio.create_task(handler())
    await asyncio.wait_for(started.wait(), 5)
    assert in_flight(registry) == 1
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert in_flight(registry) == 0
    await limiter.drain()
    again = await limiter.admit(t, "d", prompt_tokens=1, max_tokens=1)
    limiter.release(again)
    await limiter.drain()


async def test_crashed_process_leases_expire(redis_server: RedisServer, redis_client: Any) -> None:
    """A process that dies without releasing stops renewing its lease; the slot comes back."""
    async for make in _factory(redis_server.url, lease_s=0.3):
        crashed = make()
        t = tenant(max_concurrency=1, budget=Budget(amount=1.0, period="day"))
        await crashed.admit(t, "lost", prompt_tokens=100, max_tokens=100)  # never released
        survivor = make()
        refused = await admit_or_none(survivor, t, "x")
        assert isinstance(refused, ApiError)
        deadline = time.monotonic() + 5
        while True:  # bounded poll on the observable outcome, not a fixed sleep
            got = await admit_or_none(survivor, t, f"x{time.monotonic()}")
            if isinstance(got, Reservation):
                break
            assert time.monotonic() < deadline, "expired lease never freed the slot"
            await asyncio.sleep(0.05)
        usage = await survivor.usage(t)
        assert usage["in_flight"] == 1
        assert usage["reserved"] == pytest.approx(got.cost)  # the lost estimate was freed
        survivor.release(got)


# -- budget -------------------------------------------------------------------------------------


async def test_burst_over_three_times_the_budget(limiters: LimiterFactory) -> None:
    limiter = limiters()
    # Each request: 100 prompt + 100 max_tokens -> estimate 0.1 + 0.2 = 0.3; 100 of them = 30.0.
    budget = 10.0
    t = tenant(budget=Budget(amount=budget, period="day"))
    barrier = asyncio.Barrier(100)
    admitted_cost = 0.0
    max_one = 0.0
    refusals: list[ApiError] = []

    async def one(i: int) -> None:
        nonlocal admitted_cost, max_one
        await barrier.wait()
        result = await admit_or_none(limiter, t, f"r{i}", prompt=100, max_tokens=100)
        if isinstance(result, ApiError):
            refusals.append(result)
            return
        # Real usage: the prompt estimate was a little low, the completion stopped early.
        prompt, completion = 110, 40 + i % 60
        cost = (prompt * PRICE.prompt_per_1k + completion * PRICE.completion_per_1k) / 1000
        max_one = max(max_one, result.cost, cost)
        admitted_cost += cost
        task = limiter.settle(result, prompt, completion, cost)
        if task is not None:
            await task

    async with asyncio.timeout(60):
        await asyncio.gather(*(one(i) for i in range(100)))
    assert not limiter.degraded  # every decision below came from Redis
    assert refusals
    assert all(r.code == "budget_exceeded" for r in refusals)
    assert admitted_cost <= budget + max_one
    usage = await limiter.usage(t)
    assert usage["spent"] == pytest.approx(admitted_cost)
    assert usage["reserved"] == pytest.approx(0.0, abs=1e-9)
    assert usage["remaining_budget"] == pytest.approx(max(0.0, budget - admitted_cost), abs=1e-9)
    retry = int(refusals[0].response_headers()["retry-after"])
    assert retry == pytest.approx(period_window("day", time.time())[1], abs=5)


# -- rate limits and several processes ----------------------------------------------------------


async def test_two_processes_hold_one_combined_limit(limiters: LimiterFactory) -> None:
    a, b = limiters(), limiters()
    t = tenant(max_concurrency=3, requests_per_minute=10)
    barrier = asyncio.Barrier(40)
    outcomes: list[tuple[Limiter, Reservation | ApiError]] = []

    async def one(i: int) -> None:
        await barrier.wait()
        limiter = a if i % 2 else b
        outcomes.append((limiter, await admit_or_none(limiter, t, f"r{i}")))

    async with asyncio.timeout(30):
        await asyncio.gather(*(one(i) for i in range(40)))
    held = [(lim, o) for lim, o in outcomes if isinstance(o, Reservation)]
    assert len(held) == 3
    assert {o.code for _, o in outcomes if isinstance(o, ApiError)} == {"concurrency_limited"}
    for lim, h in held:
        lim.release(h)
    await a.drain()
    await b.drain()

    # Requests per minute across both: 3 used above, 7 more, then 429 rate_limited.
    results: list[Reservation | ApiError] = []
    for i in range(12):
        limiter = a if i % 2 else b
        result = await admit_or_none(limiter, t, f"s{i}")
        if isinstance(result, Reservation):
            task = limiter.release(result)
            if task is not None:
                await task
        results.append(result)
    ok = [r for r in results if isinstance(r, Reservation)]
    assert len(ok) == 7
    refused = [r for r in results if isinstance(r, ApiError)]
    assert {r.code for r in refused} == {"rate_limited"}
    headers = refused[0].response_headers()
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert ok[0].headers["x-ratelimit-remaining-requests"] == "6"
    assert ok[-1].headers["x-ratelimit-remaining-requests"] == "0"


async def test_tokens_per_minute(limiters: LimiterFactory) -> None:
    limiter = limiters()
    t = tenant(tokens_per_minute=100)
    first = await limiter.admit(t, "a", prompt_tokens=30, max_tokens=30)
    assert first.headers["x-ratelimit-remaining-tokens"] == "40"
    refused = await admit_or_none(limiter, t, "b", prompt=30, max_tokens=30)
    assert isinstance(refused, ApiError)
    assert refused.code == "rate_limited"
    # Settling with the real usage (10 tokens) gives the unused estimate back.
    task = limiter.settle(first, 5, 5, 0.0)
    assert task is not None
    await task
    second = await limiter.admit(t, "b", prompt_tokens=30, max_tokens=30)
    assert second.headers["x-ratelimit-remaining-tokens"] == "30"
    limiter.release(second)
    await limiter.drain()


async def test_unlimited_tenants_cost_no_redis_call(
    limiters: LimiterFactory, redis_client: aioredis.Redis
) -> None:
    metrics, registry = new_metrics()
    limiter = limiters(metrics)
    t = tenant("globex")  # no limits at all (max_tokens alone is checked by the request filter)
    await redis_client.config_resetstat()
    handles = [await limiter.admit(t, f"r{i}", prompt_tokens=10, max_tokens=10) for i in range(50)]
    assert in_flight(registry, "globex") == 50
    for h in handles:
        assert limiter.settle(h, 10, 10, 0.01) is None
    stats = await redis_client.info("commandstats")
    assert all(name.startswith("cmdstat_config") for name in stats), stats
    assert in_flight(registry, "globex") == 0
    assert handles[0].headers == {}


# -- Redis unreachable --------------------------------------------------------------------------


async def test_redis_killed_local_share_then_reconcile(redis_private: RedisServer) -> None:
    async for make in _factory(redis_private.url):
        a = make(timeout=0.25, retry_s=0.2)
        b = make(timeout=0.25, retry_s=0.2)
        assert await a.heartbeat()
        assert await b.heartbeat()
        assert await a.heartbeat()
        assert a.live_gateways == 2
        t = tenant(max_concurrency=4, requests_per_minute=100,
                   budget=Budget(amount=1.0, period="month"))  # fmt: skip
        warm = await a.admit(t, "warm", prompt_tokens=10, max_tokens=10)
        task = a.settle(warm, 10, 10, 0.03)
        assert task is not None
        await task

        redis_private.kill()
        started = time.monotonic()
        async with asyncio.timeout(5):  # nothing hangs
            results = [await admit_or_none(a, t, f"d{i}") for i in range(5)]
        assert time.monotonic() - started < 3
        assert a.degraded
        held = [r for r in results if isinstance(r, Reservation)]
        assert len(held) == 2  # max_concurrency 4 over 2 live gateways
        assert all(h.mode == "local" for h in held)
        refused = [r for r in results if isinstance(r, ApiError)]
        assert {r.code for r in refused} == {"concurrency_limited"}
        # Spend while degraded is recorded locally and queued.
        for i, h in enumerate(held):
            a.settle(h, 10, 10, 0.05 + i * 0.01)
        assert a.pending == 2
        # The local budget share is half of what was left at the last answer from Redis.
        big = await admit_or_none(a, t, "big", prompt=100, max_tokens=250)  # 0.6 > (1-0.03)/2
        assert isinstance(big, ApiError)
        assert big.code == "budget_exceeded"

        redis_private.start()
        await until(a.heartbeat, 5.0, "the limiter seeing Redis again")
        assert a.pending == 0
        assert not a.degraded
        usage = await a.usage(t)
        assert usage["spent"] == pytest.approx(0.03 + 0.05 + 0.06)
        assert usage["in_flight"] == 0
        # A replayed settlement is not charged twice.
        assert await a._store.settle("acme", "month", "d0:local", tokens=20, cost=0.05) == 2


async def test_frozen_redis_costs_one_timeout(redis_private: RedisServer) -> None:
    async for make in _factory(redis_private.url):
        limiter = make(timeout=0.2, retry_s=30)
        t = tenant(max_concurrency=2)
        redis_private.freeze()
        try:
            started = time.monotonic()
            async with asyncio.timeout(5):
                results = [await admit_or_none(limiter, t, f"f{i}") for i in range(20)]
            elapsed = time.monotonic() - started
        finally:
            redis_private.thaw()
        assert elapsed < 1.0  # one 0.2 s timeout, then the local share without asking Redis
        assert sum(isinstance(r, Reservation) for r in results) == 2
        for r in results:
            if isinstance(r, Reservation):
                limiter.release(r)
