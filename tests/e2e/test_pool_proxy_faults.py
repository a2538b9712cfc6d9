"""Network faults between the gateway and a real vLLM engine, injected by the TCP fault proxy:
latency and slicing (still correct, only slower), freeze (a bounded 503 or SSE error, never a hang),
reset (retried on another replica, or 503 engine_unavailable when there is none)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from adapters.engine_process import EngineProcess
from tests.fixtures.faultproxy import FaultProxyFactory
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, SeededTenant
from tests.fixtures.models import TinyModels
from tests.fixtures.placement import homed_tenant
from tests.fixtures.traffic import (
    auth,
    chat_body,
    contents,
    errors,
    metric,
    sse_payloads,
    wait_for,
)

pytestmark = pytest.mark.engine

READ_TIMEOUT_S = 2.0


def _post(gw: GatewayProcess, tenant: SeededTenant, **kw: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(
        gw.url + "/v1/chat/completions", json=chat_body(tenant.alias, **kw),
        headers=auth(tenant.api_key), timeout=60,
    )  # fmt: skip
    return response, time.monotonic() - started


def test_latency_and_slicing_slow_requests_down_but_keep_them_correct(
    gateway_factory: GatewayFactory,
    engine: EngineProcess,
    tiny_models: TinyModels,
    fault_proxy: FaultProxyFactory,
) -> None:
    proxy = fault_proxy(engine.port)
    gw = gateway_factory(engines=[proxy.url])
    tenant = gw.seed_tenant("slow", adapter=tiny_models.adapter_relpaths[0])
    gw.wait_ready()
    plain, _ = _post(gw, tenant)
    streamed, _ = _post(gw, tenant, stream=True)
    assert plain.status_code == streamed.status_code == 200

    proxy.set(latency_s=0.3)
    slow, elapsed = _post(gw, tenant)
    assert slow.status_code == 200, slow.text
    assert elapsed >= 0.6  # at least one delayed chunk each way
    assert slow.json()["choices"] == plain.json()["choices"]

    proxy.set(latency_s=0.0, slice_bytes=7)  # SSE frames now arrive cut anywhere
    sliced, _ = _post(gw, tenant, stream=True)
    assert sliced.status_code == 200
    expected = sse_payloads([streamed.content])
    got = sse_payloads([sliced.content])  # every frame parsed whole from the cut-up bytes
    # The same text; not the same chunking: a busy vLLM merges deltas its reader fell behind on.
    assert "".join(contents(got)) == "".join(contents(expected))
    assert got[-1] == b"[DONE]"


@pytest.mark.parametrize("stream", [False, True])
def test_frozen_engine_fails_within_the_read_timeout(
    gateway_factory: GatewayFactory,
    engine: EngineProcess,
    tiny_models: TinyModels,
    fault_proxy: FaultProxyFactory,
    stream: bool,
) -> None:
    proxy = fault_proxy(engine.port)
    gw = gateway_factory(engines=[proxy.url], engine_read_timeout_s=READ_TIMEOUT_S)
    tenant = gw.seed_tenant("frozen", adapter=tiny_models.adapter_relpaths[0])
    gw.wait_ready()
    proxy.set(freeze="both")
    response, elapsed = _post(gw, tenant, stream=stream)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert "retry-after" in response.headers
    assert elapsed < READ_TIMEOUT_S + 3.0
    proxy.clear()
    wait_for(lambda: metric(gw.url, "loragate_engine_healthy", engine="engine-0") == 1, 10)
    assert _post(gw, tenant)[0].status_code == 200  # and it recovers by itself


def test_freeze_mid_stream_ends_the_stream_with_one_error_event(
    gateway_factory: GatewayFactory,
    engine: EngineProcess,
    tiny_models: TinyModels,
    fault_proxy: FaultProxyFactory,
) -> None:
    proxy = fault_proxy(engine.port)
    gw = gateway_factory(engines=[proxy.url], engine_read_timeout_s=READ_TIMEOUT_S)
    tenant = gw.seed_tenant("stall", adapter=tiny_models.adapter_relpaths[0])
    gw.wait_ready()
    started = time.monotonic()
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", headers=auth(tenant.api_key), timeout=30,
        json=chat_body(tenant.alias, stream=True, max_tokens=1500),
    ) as response:  # fmt: skip
        assert response.status_code == 200
        chunks = []
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            if len(chunks) == 1:
                proxy.set(freeze="down")  # the engine stalls after streaming started
    elapsed = time.monotonic() - started
    payloads = sse_payloads(chunks)
    assert b"[DONE]" not in payloads
    assert len(errors(payloads)) == 1
    assert errors(payloads)[0]["code"] == "engine_error"
    assert elapsed < READ_TIMEOUT_S + 5.0
    wait_for(lambda: metric(gw.url, "loragate_engine_in_flight", engine="engine-0") == 0, 5)


def test_reset_is_retried_on_another_replica(
    gateway_factory: GatewayFactory,
    engine: EngineProcess,
    tiny_models: TinyModels,
    fault_proxy: FaultProxyFactory,
) -> None:
    proxy = fault_proxy(engine.port)
    # Two replica entries: engine-0 through the proxy, engine-1 the same engine directly.
    gw = gateway_factory(engines=[proxy.url, engine.url])
    path = tiny_models.adapter_relpaths[2]
    name = homed_tenant("resetme", tiny_models.store_root, path, "engine-0")  # via the proxy
    tenant = gw.seed_tenant(name, adapter=path)
    gw.wait_ready()
    proxy.set(reset_on=b"/v1/chat/completions")  # health probes still pass, chats crash
    for stream in (False, True):
        response, _ = _post(gw, tenant, stream=stream)
        assert response.status_code == 200, response.text
        assert response.headers["x-loragate-engine"] == "engine-1"
        if stream:
            assert sse_payloads([response.content])[-1] == b"[DONE]"
    assert proxy.resets >= 1


def test_reset_with_no_other_replica_is_a_fast_503(
    gateway_factory: GatewayFactory,
    engine: EngineProcess,
    tiny_models: TinyModels,
    fault_proxy: FaultProxyFactory,
) -> None:
    proxy = fault_proxy(engine.port)
    gw = gateway_factory(engines=[proxy.url])
    tenant = gw.seed_tenant("alone", adapter=None)
    gw.wait_ready()
    proxy.set(reset_on=b"/v1/chat/completions")
    response, elapsed = _post(gw, tenant)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert elapsed < 5.0
    proxy.set(reset_on=None, refuse=True)  # now every connection, probes included
    response, elapsed = _post(gw, tenant)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert elapsed < 5.0
