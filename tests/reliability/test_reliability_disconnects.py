"""R6: 200 clients disconnect at random points: before the first token, mid-stream, and
during a non-streaming request. Every engine request must be aborted, every slot (pool replica,
adapter users, tenant limiter, in-flight gauges) must return to idle, and no asyncio task may be
left behind.

Why this shape: the gateway app runs in this test's event loop (the in-process fixture's real
lifespan) behind a real HTTP server on 127.0.0.1 (uvicorn, or granian with
LORAGATE_SERVER=granian: tests/fixtures/servers.py), so `asyncio.all_tasks()` sees every task the
gateway owns and the pool and limiter can be read directly; clients are raw asyncio sockets that
close (FIN) or reset (RST) mid-request, which httpx's ASGITransport cannot model. The engine is the
scripted fake: it is slow on purpose (headers first, the first token after `FIRST_TOKEN_S`, then
paced tokens, as vLLM streams), and it records each request whose connection the gateway dropped
before the end, with the moment it noticed, so "aborted" is seen at the engine side per request.
A real vLLM cannot tell which client each abort belongs to (tests/e2e/test_cancel_disconnect.py covers
the real engine at each point, one request at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import statistics
import struct
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.state import AppState
from tests.fixtures.fake_engine import FakeEngine, Step
from tests.fixtures.gateway import SeededTenant
from tests.fixtures.inprocess import InProcessFactory, InProcessGateway
from tests.fixtures.servers import served
from tests.fixtures.traffic import until

CLIENTS = 200
CONCURRENCY = 50
SEED = 8006
FIRST_TOKEN_S = 1.5  # the fake engine's time to first token (after its headers)
TOKEN_GAP_S = 0.01
SETTLE_S = 15.0  # bound on every "back to idle" wait (a shared 2-core box)
Point = Literal["before_first_token", "mid_stream", "non_streaming"]
POINTS: tuple[Point, ...] = ("before_first_token", "mid_stream", "non_streaming")


@dataclass(frozen=True)
class Plan:
    client: int
    point: Point
    tenant: int
    reset: bool  # RST instead of FIN
    tokens: int  # mid_stream: tokens read before leaving
    wait_s: float  # before_first_token / non_streaming: time after the engine has the request


@dataclass(frozen=True)
class Left:
    plan: Plan
    marker: str
    closed_at: float
    observed: Point  # what the client had actually seen when it left
    head: bytes


def _plans(rng: random.Random) -> list[Plan]:
    return [
        Plan(
            client=i,
            point=rng.choice(POINTS),
            tenant=rng.randrange(3),
            reset=rng.random() < 0.5,
            tokens=rng.randint(1, 12),
            wait_s=rng.uniform(0.0, 0.4),
        )
        for i in range(CLIENTS)
    ]


def _request(key: str, body: dict[str, Any]) -> bytes:
    payload = orjson.dumps(body)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    ).encode()
    return head + payload


def _engine_has(fake: FakeEngine, marker: str) -> bool:
    return any(_marker_of(body) == marker for body in list(fake.requests))


def _marker_of(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return str(messages[-1].get("content")) if messages else ""


async def _client(port: int, plan: Plan, tenant: SeededTenant, fake: FakeEngine) -> Left:
    marker = f"r6 client {plan.client} leaves {plan.point}"
    body = {
        "model": tenant.alias,
        "messages": [{"role": "user", "content": marker}],
        "max_tokens": 2000,
        "stream": plan.point != "non_streaming",
    }
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buffer = bytearray()

    async def read() -> None:
        while chunk := await reader.read(65536):
            buffer.extend(chunk)

    reading = asyncio.create_task(read())
    try:
        writer.write(_request(tenant.api_key, body))
        await writer.drain()
        async with asyncio.timeout(60):
            if plan.point == "mid_stream":
                while buffer.count(b"data: ") < plan.tokens + 1:  # the role chunk, then tokens
                    if reading.done():
                        raise AssertionError(f"stream ended early: {bytes(buffer)[-300:]!r}")
                    await asyncio.sleep(0.005)
            else:
                await until(lambda: _engine_has(fake, marker), 60, "engine has the request")
                await asyncio.sleep(plan.wait_s)  # the random point itself
        head = bytes(buffer)
        observed: Point = plan.point
        if plan.point == "before_first_token" and b"data: " in head:
            observed = "mid_stream"  # the box was slow enough for a token to get out first
        if plan.point == "non_streaming":
            assert b"\r\n\r\n" not in head, head  # nothing had come back
        if plan.reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()
        closed_at = time.monotonic()
    finally:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading
        writer.close()
    return Left(plan, marker, closed_at, observed, head)


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def _scrape(gw: InProcessGateway) -> str:
    response = await gw.client.get("/metrics")
    assert response.status_code == 200
    return response.text


async def _idle_tasks() -> tuple[int, set[str]]:
    """The idle task count: the least seen over a second (health probes and the snapshot
    watcher run short-lived tasks of their own every fraction of a second)."""
    counts = []
    names: set[str] = set()
    for _ in range(50):
        tasks = asyncio.all_tasks()
        counts.append(len(tasks))
        names |= {t.get_name() for t in tasks}
        await asyncio.sleep(0.02)
    return min(counts), names


def _slots_idle(state: AppState) -> bool:
    return all(r.in_flight == 0 and not r.users for r in state.pool.replicas)


@pytest.mark.timeout(240)
async def test_r6_random_disconnects_abort_every_engine_request_and_leak_nothing(
    inprocess_gateway: InProcessFactory, tiny_adapter_paths: tuple[str, ...]
) -> None:
    gw = await inprocess_gateway(engine_max_concurrency=CONCURRENCY * 2)
    limits = {"max_concurrency": 1000, "requests_per_minute": 100_000,
              "tokens_per_minute": 100_000_000, "budget": {"amount": 1e6, "period": "day"}}  # fmt: skip
    tenants = [
        await gw.seed_tenant("r6free", adapter=tiny_adapter_paths[0]),
        await gw.seed_tenant("r6limited", adapter=tiny_adapter_paths[1], limits=limits),
        await gw.seed_tenant("r6base", adapter=None, limits=limits),
    ]
    fake, state = gw.engine, gw.state
    fake.default = Step("ok", tokens=2000, delay_s=FIRST_TOKEN_S, gap_s=TOKEN_GAP_S)
    plans = _plans(random.Random(SEED))

    async with served(gw.app) as port:
        # Warm-up: one complete request per tenant and kind, so lazily created state exists.
        for tenant in tenants:
            for stream in (False, True):
                fake.script(Step("ok", tokens=2))
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                body = {"model": tenant.alias, "stream": stream, "max_tokens": 2,
                        "messages": [{"role": "user", "content": "warm"}]}  # fmt: skip
                writer.write(_request(tenant.api_key, body))
                async with asyncio.timeout(30):
                    raw = await reader.readuntil(b"\r\n\r\n")
                    assert raw.startswith(b"HTTP/1.1 200"), raw
                    rest = await reader.read(65536)
                    while (b"[DONE]" if stream else b"}") not in rest:
                        rest += await reader.read(65536)
                writer.close()
                await writer.wait_closed()
        await until(lambda: fake.active == 0 and _slots_idle(state), SETTLE_S, "warm-up idle")
        await state.limiter.drain()
        baseline_tasks, tasks_before = await _idle_tasks()
        engine_before, aborted_before = len(fake.requests), len(fake.aborted)
        assert fake.disconnects == 0

        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(plan: Plan) -> Left:
            async with gate:
                return await _client(port, plan, tenants[plan.tenant], fake)

        started = time.monotonic()
        left = await asyncio.gather(*(one(p) for p in plans))
        traffic_s = time.monotonic() - started

        # Every engine request is aborted: the engine saw each connection dropped early.
        await until(
            lambda: fake.active == 0 and len(fake.aborted) - aborted_before >= CLIENTS,
            SETTLE_S,
            "every engine request aborted",
        )
        engine_requests = fake.requests[engine_before:]
        aborted = fake.aborted[aborted_before:]
        assert len(engine_requests) == CLIENTS
        by_marker = {_marker_of(body): at for at, body in aborted}
        assert sorted(by_marker) == sorted(x.marker for x in left)
        abort_ms = [(by_marker[x.marker] - x.closed_at) * 1000 for x in left]

        # Slots and gauges back to idle.
        await until(lambda: _slots_idle(state), SETTLE_S, "pool slots idle")
        await state.limiter.drain()
        for tenant in tenants:
            usage = await state.limiter.usage(state.watcher.state.tenants[tenant.id])
            assert usage["in_flight"] == 0, (tenant.id, usage)
            assert usage["pending_reconciliation"] == 0
        text = await _scrape(gw)
        in_flight = _samples(text, "loragate_in_flight_requests")
        assert in_flight
        assert all(v == 0 for _, v in in_flight), in_flight
        engine_gauges = _samples(text, "loragate_engine_in_flight")
        assert engine_gauges
        assert all(v == 0 for _, v in engine_gauges), engine_gauges
        cancelled = sum(
            v
            for labels, v in _samples(text, "loragate_requests_total")
            if labels.get("status") == "cancelled"
        )
        assert cancelled == CLIENTS

        # No task left behind (the server's connection tasks and the gateway's own included).
        try:
            settle = await until(
                lambda: len(asyncio.all_tasks()) <= baseline_tasks, SETTLE_S, "tasks settled"
            )
        except TimeoutError:
            extra = [t for t in asyncio.all_tasks() if t.get_name() not in tasks_before]
            raise AssertionError(f"leaked tasks: {[repr(t) for t in extra][:10]}") from None
        tasks_after = len(asyncio.all_tasks())

    points = Counter(x.observed for x in left)
    assert all(points[p] > 0 for p in POINTS), points
    resets = sum(x.plan.reset for x in left)
    abort_ms.sort()
    p95 = abort_ms[int(0.95 * (len(abort_ms) - 1))]
    print(
        f"FIGURE R6: {CLIENTS} clients disconnected at random points (seed {SEED}; "
        f"{points['before_first_token']} before the first token, {points['mid_stream']} "
        f"mid-stream, {points['non_streaming']} non-streaming; {resets} RST, "
        f"{CLIENTS - resets} FIN) in {traffic_s:.1f} s: {len(aborted)}/{len(engine_requests)} "
        f"engine requests aborted (100%), abort after the disconnect P50 "
        f"{statistics.median(abort_ms):.0f} ms, P95 {p95:.0f} ms, max {abort_ms[-1]:.0f} ms; "
        f"pool slots, adapter users, limiter slots (Redis in_flight) and in-flight gauges all 0; "
        f"{int(cancelled)} requests metered 'cancelled'; asyncio tasks {baseline_tasks} before, "
        f"{tasks_after} after (settled in {settle:.2f} s)"
    )
