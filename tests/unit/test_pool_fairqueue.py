"""The engine pool's wait queue is the fair queue: hand-over order, no barging, bounds, cancellation.

No engine and no HTTP: replicas are marked healthy by hand and requests take the base model (no
adapter load), so `acquire`/`release` touch only the pool's own state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from adapters.errors import EngineError, QueueLimited
from gateway.engines.fairqueue import Flow
from gateway.engines.pool import EnginePool
from gateway.engines.replica import Lease, PoolConfig
from gateway.errors import from_domain


def _pool(cap: int = 2, queue: int = 16, per_tenant: int = 8, timeout_s: float = 5.0) -> EnginePool:
    config = PoolConfig(
        base_model="base",
        adapter_store=Path("."),
        engine_adapter_root=Path("."),
        max_concurrency=cap,
        queue_size=queue,
        tenant_queue_size=per_tenant,
        queue_timeout_s=timeout_s,
    )
    waits: list[tuple[str, float]] = []
    pool = EnginePool(
        ["http://127.0.0.1:9"],
        cast(aiohttp.ClientSession, None),
        config,
        on_wait=lambda t, s: waits.append((t, s)),
    )
    pool.replicas[0].healthy = True
    cast(Any, pool).waits = waits
    return pool


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _take(pool: EnginePool, tenant: str, log: list[str], **flow: Any) -> Lease:
    lease = await pool.acquire(None, flow=Flow(tenant, **flow))
    log.append(tenant)
    return lease


async def _serve_all(pool: EnginePool, held: list[Lease], tasks: list[asyncio.Task[Lease]]) -> None:
    """Release the held leases, then each lease as its task gets one, one slot at a time."""
    for lease in held:
        pool.release(lease)
    pending = {t for t in tasks if not t.done()}
    for task in tasks:
        if task.done() and task.exception() is None:
            pool.release(task.result())
    while pending:
        done, pending = await asyncio.wait(pending, timeout=2, return_when=asyncio.FIRST_COMPLETED)
        assert done, "a request waits with a slot free"
        for task in done:
            pool.release(task.result())


async def test_freed_slots_go_round_robin_between_tenants_not_fifo() -> None:
    pool = _pool(cap=2)
    order: list[str] = []
    held = [await _take(pool, "flood", order) for _ in range(2)]
    flood = [asyncio.create_task(_take(pool, "flood", order)) for _ in range(6)]
    await _settle()
    quiet = asyncio.create_task(_take(pool, "quiet", order))
    await _settle()
    assert pool.queue_depths() == {"flood": 6, "quiet": 1}
    pool.release(held[0])
    await _settle()
    pool.release(held[1])
    await _settle()
    # One round: the flood's turn, then the quiet tenant's, ahead of 5 earlier flood requests.
    assert order[2:] == ["flood", "quiet"]
    await _serve_all(pool, [], [*flood, quiet])
    assert order == ["flood"] * 3 + ["quiet"] + ["flood"] * 5
    assert pool.replicas[0].in_flight == 0
    assert pool.queue_depths() == {}


async def test_a_new_request_does_not_take_a_slot_handed_to_a_waiter() -> None:
    pool = _pool(cap=1)
    order: list[str] = []
    held = await _take(pool, "a", order)
    waiting = asyncio.create_task(_take(pool, "b", order))
    await _settle()
    pool.release(held)  # hands the slot to b; b has not run yet
    barger = asyncio.create_task(_take(pool, "a", order))
    await _settle()
    assert order == ["a", "b"]
    assert not barger.done()
    pool.release(await waiting)
    pool.release(await barger)
    assert order == ["a", "b", "a"]


async def test_a_woken_waiter_that_is_cancelled_passes_its_slot_on() -> None:
    pool = _pool(cap=1)
    order: list[str] = []
    held = await _take(pool, "a", order)
    first = asyncio.create_task(_take(pool, "b", order))
    second = asyncio.create_task(_take(pool, "c", order))
    await _settle()
    pool.release(held)  # wakes b ...
    first.cancel()  # ... which leaves before taking the slot
    await _settle()
    assert first.cancelled()
    assert second.done(), "the slot went nowhere"
    pool.release(second.result())
    assert pool.replicas[0].in_flight == 0
    assert pool._handoffs == 0


async def test_a_tenant_over_its_queue_bound_gets_429_and_others_still_queue() -> None:
    pool = _pool(cap=1, queue=16, per_tenant=2)
    order: list[str] = []
    held = await _take(pool, "flood", order)
    queued = [asyncio.create_task(_take(pool, "flood", order)) for _ in range(2)]
    await _settle()
    assert pool.shedding(Flow("flood"))
    assert not pool.shedding(Flow("quiet"))
    with pytest.raises(EngineError) as refused:
        await _take(pool, "flood", order)
    assert from_domain(refused.value).code == "queue_limited"
    assert from_domain(refused.value).status == 429
    assert from_domain(refused.value).response_headers()["retry-after"] == "1"
    quiet = asyncio.create_task(_take(pool, "quiet", order))
    await _settle()
    assert pool.queue_depths() == {"flood": 2, "quiet": 1}
    await _serve_all(pool, [held], [*queued, quiet])
    assert order == ["flood", "flood", "quiet", "flood"]  # one round: flood, then quiet


async def test_a_full_queue_refuses_the_flood_not_the_newcomer() -> None:
    pool = _pool(cap=1, queue=3, per_tenant=3)
    order: list[str] = []
    held = await _take(pool, "flood", order)
    queued = [asyncio.create_task(_take(pool, "flood", order)) for _ in range(3)]
    await _settle()
    quiet = asyncio.create_task(_take(pool, "quiet", order))
    await _settle()
    # The newest flood request made room, and was told it is its tenant's excess.
    pushed = queued[2]
    assert pushed.done()
    assert isinstance(pushed.exception(), QueueLimited)
    assert from_domain(cast(QueueLimited, pushed.exception())).code == "queue_limited"
    await _serve_all(pool, [held], [*queued[:2], quiet])
    assert order == ["flood", "flood", "quiet", "flood"]


async def test_a_wait_past_the_timeout_is_overloaded_and_measured() -> None:
    pool = _pool(cap=1, timeout_s=0.05)
    order: list[str] = []
    held = await _take(pool, "a", order)
    with pytest.raises(EngineError) as refused:
        await _take(pool, "b", order)
    assert from_domain(refused.value).code == "overloaded"
    assert pool.queue_depths() == {}
    pool.release(held)
    waits = cast(Any, pool).waits
    assert waits[0] == ("a", 0.0)
    assert waits[1][0] == "b"
    assert waits[1][1] >= 0.05


async def test_priority_band_is_served_before_earlier_standard_requests() -> None:
    pool = _pool(cap=1)
    order: list[str] = []
    held = await _take(pool, "a", order)
    standard = [asyncio.create_task(_take(pool, f"s{i}", order)) for i in range(3)]
    await _settle()
    urgent = asyncio.create_task(_take(pool, "urgent", order, band=0))
    await _settle()
    pool.release(held)
    pool.release(await urgent)
    for task in standard:
        await _settle()
        pool.release(await task)
    assert order == ["a", "urgent", "s0", "s1", "s2"]
