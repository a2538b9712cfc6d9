"""Faults a real vLLM cannot be made to produce on demand, against the scripted fake engine and the
real gateway subprocess: mid-stream death, 5xx before the first byte, overload, disconnects while
the engine holds the request."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

from gateway.engines.pool import EnginePool
from gateway.engines.replica import PoolConfig
from tests.fixtures.fake_engine import FakeEngineFactory, Step
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.models import TinyModels
from tests.fixtures.traffic import (
    auth,
    chat_body,
    contents,
    errors,
    metric,
    open_raw_chat,
    sse_payloads,
    wait_for,
)


def test_mid_stream_drop_ends_with_one_error_event_and_no_replay(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    first, second = fake_engine(), fake_engine()
    first.default = second.default = Step("drop_after", tokens=3)
    gw = gateway_factory(engines=[first.url, second.url])
    tenant = gw.seed_tenant("dropper", adapter=None)
    gw.wait_ready()
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=chat_body("chat", stream=True),
        headers=auth(tenant.api_key), timeout=30,
    ) as response:  # fmt: skip
        assert response.status_code == 200
        payloads = sse_payloads(response.iter_bytes())
    assert contents(payloads) == ["", "t0 ", "t1 ", "t2 "]  # each token once, in order
    assert b"[DONE]" not in payloads
    errs = errors(payloads)
    assert len(errs) == 1
    assert errors([payloads[-1]]) == errs  # and it is the last event
    assert errs[0]["code"] == "engine_error"
    # Never replayed on the other replica once bytes reached the client.
    assert len(first.requests) + len(second.requests) == 1
    wait_for(lambda: metric(gw.url, "loragate_engine_in_flight", engine="engine-0") == 0, 5)


@pytest.mark.parametrize("stream", [False, True])
def test_5xx_before_first_byte_is_retried_on_the_other_replica(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory, stream: bool
) -> None:
    broken, healthy = fake_engine(), fake_engine()
    broken.default = Step("status", status=500)
    gw = gateway_factory(engines=[broken.url, healthy.url])
    tenant = gw.seed_tenant("retry", adapter=None)
    gw.wait_ready()
    response = httpx.post(
        gw.url + "/v1/chat/completions", json=chat_body("chat", stream=stream),
        headers=auth(tenant.api_key), timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["x-loragate-engine"] == "engine-1"
    assert len(broken.requests) == 1  # engine-0 was tried first (ties break by name)
    assert len(healthy.requests) == 1
    if stream:
        payloads = sse_payloads([response.content])
        assert contents(payloads) == ["", "t0 ", "t1 ", "t2 ", "t3 ", "t4 "]
        assert payloads[-1] == b"[DONE]"
        assert not errors(payloads)
    else:
        assert response.json()["choices"][0]["message"]["content"] == "t0 t1 t2 t3 t4 "


def test_a_replica_failing_in_a_row_is_ejected_and_exported_as_such(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    """Passive health: 3 consecutive 5xx eject engine-0 (its probe still passes, so `healthy`
    stays 1 and `ejected` says why it gets no traffic); every client request still succeeds."""
    broken, healthy = fake_engine(), fake_engine()
    broken.default = Step("status", status=500)
    gw = gateway_factory(engines=[broken.url, healthy.url])
    tenant = gw.seed_tenant("ejector", adapter=None)
    gw.wait_ready()
    assert metric(gw.url, "loragate_engine_ejected", engine="engine-0") == 0
    for _ in range(6):
        response = httpx.post(
            gw.url + "/v1/chat/completions", json=chat_body("chat"),
            headers=auth(tenant.api_key), timeout=30,
        )  # fmt: skip
        assert response.status_code == 200, response.text
    assert len(broken.requests) == 3  # then ejected: the next three went straight to engine-1
    assert metric(gw.url, "loragate_engine_ejected", engine="engine-0") == 1
    assert metric(gw.url, "loragate_engine_healthy", engine="engine-0") == 1
    assert metric(gw.url, "loragate_engine_ejected", engine="engine-1") == 0


async def test_a_queued_request_is_served_as_soon_as_a_replica_comes_back(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    """engine-0 is busy (cap 1) and engine-1 is down: a new request queues. When engine-1's probe
    passes, the queue is served at once, not when engine-0's request ends (or the queue times out)."""
    busy, late = fake_engine(), fake_engine()
    busy.default = Step("hold", tokens=2)
    late.health_status = 503
    gw = gateway_factory(engines=[busy.url, late.url], engine_max_concurrency=1)
    tenant = gw.seed_tenant("waker", adapter=None)
    gw.wait_ready()
    async with httpx.AsyncClient(base_url=gw.url, headers=auth(tenant.api_key), timeout=30) as c:
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body("chat")))
        await asyncio.to_thread(busy.wait_until, lambda e: e.active == 1)
        queued = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body("chat")))
        # Admitted (the tenant's in-flight gauge counts it) with no replica free: it is queued.
        await asyncio.to_thread(
            wait_for, lambda: metric(gw.url, "loragate_in_flight_requests", tenant="waker") == 2, 10
        )
        late.health_status = 200
        async with asyncio.timeout(4):  # under the 5 s queue timeout
            response = await queued
        assert response.status_code == 200, response.text
        assert response.headers["x-loragate-engine"] == "engine-1"
        assert busy.active == 1  # engine-0's request never ended meanwhile
        assert not held.done()
        busy.open_gate()
        async with asyncio.timeout(15):
            assert (await held).status_code == 200


async def test_one_slow_health_probe_does_not_take_a_replica_out(
    fake_engine: FakeEngineFactory, tmp_path: Path
) -> None:
    """Two probes in a row past the 2 s timeout mark a replica down, one does not (a busy engine
    answers late); an error answer or a refused connection marks it down at once."""
    fake = fake_engine()
    config = PoolConfig(base_model="tiny", adapter_store=tmp_path, engine_adapter_root=tmp_path)
    async with aiohttp.ClientSession() as session:
        pool = EnginePool([fake.url], session, config)
        replica = pool.replicas[0]
        await pool.probe_all()
        assert replica.healthy
        fake.health_delay_s = 3.0
        await pool.probe_all()
        assert replica.healthy  # one slow probe: still routed to
        await pool.probe_all()
        assert not replica.healthy  # two in a row
        fake.health_delay_s = 0.0
        await pool.probe_all()
        assert replica.healthy
        fake.health_status = 503
        await pool.probe_all()
        assert not replica.healthy  # an explicit error answer: at once


def test_5xx_everywhere_is_a_clean_503(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    a, b = fake_engine(), fake_engine()
    a.default = b.default = Step("status", status=502)
    gw = gateway_factory(engines=[a.url, b.url])
    tenant = gw.seed_tenant("down", adapter=None)
    gw.wait_ready()
    response = httpx.post(
        gw.url + "/v1/chat/completions", json=chat_body("chat"), headers=auth(tenant.api_key),
        timeout=30,
    )  # fmt: skip
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert "retry-after" in response.headers
    assert len(a.requests) + len(b.requests) == 2  # one try each, within the retry budget


async def test_one_tenant_beyond_cap_and_queue_is_a_fast_429(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    fake.default = Step("hold", tokens=2)
    gw = gateway_factory(engines=[fake.url], engine_max_concurrency=2, engine_queue_size=2)
    tenant = gw.seed_tenant("burst", adapter=None)
    gw.wait_ready()
    async with httpx.AsyncClient(base_url=gw.url, headers=auth(tenant.api_key), timeout=30) as c:

        async def one() -> tuple[httpx.Response, float]:
            started = time.monotonic()
            r = await c.post("/v1/chat/completions", json=chat_body("chat"))
            return r, time.monotonic() - started

        admitted = [asyncio.create_task(one()) for _ in range(2)]
        await asyncio.to_thread(fake.wait_until, lambda e: e.active == 2)
        burst = [asyncio.create_task(one()) for _ in range(6)]
        # Four of the six find cap and queue full of their own tenant's requests: that is the
        # tenant's own excess (429 `queue_limited`), refused fast, not queued.
        rejected: list[tuple[httpx.Response, float]] = []
        async with asyncio.timeout(10):
            for next_done in asyncio.as_completed(burst):
                rejected.append(await next_done)
                if len(rejected) == 4:
                    break
        for response, elapsed in rejected:
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "queue_limited"
            assert int(response.headers["retry-after"]) >= 1
            assert elapsed < 2.0
        assert fake.active == 2  # the queued two are still waiting at the gateway
        fake.open_gate()
        async with asyncio.timeout(15):
            done = await asyncio.gather(*admitted, *burst)
    statuses = sorted(r.status_code for r, _ in done)
    assert statuses == [200] * 4 + [429] * 4
    assert len(fake.requests) == 4
    wait_for(lambda: metric(gw.url, "loragate_engine_in_flight", engine="engine-0") == 0, 5)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_while_engine_holds_the_request_reaches_the_engine(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory, stream: bool, workers: int
) -> None:
    """Before the first byte: the gateway waits on the engine's headers (stream) or body. With 2
    worker processes the merged /metrics shows the one request in flight, then none."""
    fake = fake_engine()
    fake.default = Step("hold")
    gw = gateway_factory(engines=[fake.url], workers=workers)
    tenant = gw.seed_tenant("leaver", adapter=None)
    gw.wait_ready()
    sock = open_raw_chat(gw.url, tenant.api_key, chat_body("chat", stream=stream))
    fake.wait_until(lambda e: e.active == 1)
    assert metric(gw.url, "loragate_engine_in_flight", engine="engine-0") == 1
    sock.close()
    fake.wait_until(lambda e: e.disconnects == 1, timeout=5)
    wait_for(lambda: metric(gw.url, "loragate_engine_in_flight", engine="engine-0") == 0, 5)
    assert fake.active == 0


def test_adapter_load_failure_is_retried_on_another_replica(
    gateway_factory: GatewayFactory, fake_engine: FakeEngineFactory, tiny_models: TinyModels
) -> None:
    """A replica that cannot load the adapter (down, busy) must not get the retry as well."""
    engines = [fake_engine(), fake_engine()]
    gw = gateway_factory(engines=[e.url for e in engines])
    tenant = gw.seed_tenant("loader", adapter=tiny_models.adapter_relpaths[0])
    gw.wait_ready()
    # Preloaded at release creation on the adapter's home replica (rendezvous), and only there.
    (home,) = [i for i, e in enumerate(engines) if e.loaded]
    dying, healthy = engines[home], engines[1 - home]
    assert len(dying.loaded) == 1
    dying.load_status = 503
    dying.forget_adapters()  # as after a restart: the adapter has to be loaded again
    wait_for(
        lambda: metric(gw.url, "loragate_engine_resident_adapters", engine=f"engine-{home}") == 0,
        5,
    )
    response = httpx.post(
        gw.url + "/v1/chat/completions", json=chat_body("chat"), headers=auth(tenant.api_key),
        timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["x-loragate-engine"] == f"engine-{1 - home}"
    assert len(healthy.loaded) == 1
    assert not dying.requests
