"""The OpenAI surface beyond chat, in-process in front of the fake engine: /v1/completions,
GET /v1/models/{id}, tool policy, SSE keep-alive, the request id and trace context at the engine,
and the spans of one streamed request (in-memory exporter, and a real OTLP/HTTP receiver on
127.0.0.1 that decodes the protobuf payload, loadtests/otlp_sink.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.observability.tracing import Tracing
from loadtests.otlp_sink import OtlpSink
from tests.fixtures.fake_engine import Step
from tests.fixtures.inprocess import InProcessFactory, InProcessGateway

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PHASES = {"auth", "receive", "resolve", "limits", "engine.call", "first_token", "relay"}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def _events(text: str) -> list[Any]:
    return [
        orjson.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
        for line in text.split("\n")
        if line.startswith("data: ")
    ]


async def _prompt_release(
    gw: InProcessGateway, tenant: str, alias: str, prompt: dict[str, Any]
) -> None:
    version = await gw.admin("POST", f"/tenants/{tenant}/prompts/{alias}/versions", prompt, 201)
    release = await gw.admin(
        "POST", f"/tenants/{tenant}/models/{alias}/releases",
        {"adapter": None, "prompt": version["ref"]}, 201,
    )  # fmt: skip
    assert release["release"]
    await gw.sync()


async def test_completions_are_served_and_metered_like_chat(
    inprocess_gateway: InProcessFactory, tiny_adapter_paths: tuple[str, ...]
) -> None:
    gw = await inprocess_gateway()
    acme = await gw.seed_tenant("acme", adapter=tiny_adapter_paths[0], system_prompt="Be Acme.")
    headers = gw.bearer(acme.api_key)
    r = await gw.client.post(
        "/v1/completions", json={"model": "chat", "prompt": "Once", "max_tokens": 4},
        headers=headers,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion"
    assert r.json()["model"] == "chat"
    assert r.headers["x-loragate-release"] == acme.release
    sent = gw.engine.requests[-1]
    assert sent["prompt"] == "Be Acme.\n\nOnce"
    assert sent["model"].startswith("lg-acme-")
    assert "messages" not in sent
    r = await gw.client.post(
        "/v1/completions",
        json={"model": "chat", "prompt": "Once", "stream": True,
              "stream_options": {"include_usage": True}},
        headers=headers,
    )  # fmt: skip
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    assert all(e["model"] == "chat" for e in events[:-1])
    assert events[-2]["usage"]["completion_tokens"] == 5
    metrics = (await gw.client.get("/metrics")).text
    ok = [
        line for line in metrics.splitlines()
        if line.startswith("loragate_requests_total{") and 'tenant="acme"' in line
        and 'status="ok"' in line
    ]  # fmt: skip
    assert ok
    assert float(ok[0].rsplit(" ", 1)[1]) == 2.0


async def test_release_prompt_policies_refuse_tools_and_raw_prompts(
    inprocess_gateway: InProcessFactory,
) -> None:
    gw = await inprocess_gateway()
    acme = await gw.seed_tenant("acme", adapter=None, system_prompt="x")
    await _prompt_release(
        gw, "acme", "strict", {"system_prompt": "Strict.", "tool_use": "forbid",
                               "completions": "refuse"},
    )  # fmt: skip
    headers = gw.bearer(acme.api_key)
    before = len(gw.engine.requests)
    r = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "strict", "messages": [{"role": "user", "content": "x"}],
              "tools": [TOOL]},
        headers=headers,
    )  # fmt: skip
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "tools_forbidden"
    r = await gw.client.post("/v1/completions", json={"model": "strict", "prompt": "x"},
                             headers=headers)  # fmt: skip
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "completions_forbidden"
    assert len(gw.engine.requests) == before
    for alias in ("strict", "chat"):  # without tools the strict release answers; chat allows them
        r = await gw.client.post(
            "/v1/chat/completions",
            json={"model": alias, "messages": [{"role": "user", "content": "x"}],
                  **({"tools": [TOOL]} if alias == "chat" else {})},
            headers=headers,
        )  # fmt: skip
        assert r.status_code == 200, r.text
    assert gw.engine.requests[-1]["tools"] == [TOOL]


async def test_models_retrieve_answers_own_aliases_and_the_same_404_otherwise(
    inprocess_gateway: InProcessFactory,
) -> None:
    gw = await inprocess_gateway()
    acme = await gw.seed_tenant("acme", adapter=None, alias="support")
    await gw.seed_tenant("globex", adapter=None, alias="chat")
    headers = gw.bearer(acme.api_key)
    r = await gw.client.get("/v1/models/support", headers=headers)
    assert r.status_code == 200
    assert r.json() == {"id": "support", "object": "model", "created": 0, "owned_by": "acme"}
    foreign = await gw.client.get("/v1/models/chat", headers=headers)
    unknown = await gw.client.get("/v1/models/cbat", headers=headers)
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.content.replace(b"chat", b"cbat") == unknown.content
    assert (await gw.client.get("/v1/models/support")).status_code == 401


async def test_the_engine_gets_the_request_id_and_the_clients_traceparent(
    inprocess_gateway: InProcessFactory,
) -> None:
    gw = await inprocess_gateway()
    acme = await gw.seed_tenant("acme", adapter=None)
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    r = await gw.client.post(
        "/v1/chat/completions", json=body, headers={**gw.bearer(acme.api_key), "traceparent": TP}
    )
    assert r.status_code == 200
    seen = gw.engine.headers[-1]
    assert seen["x-request-id"] == r.headers["x-request-id"]
    assert seen["traceparent"] == TP  # tracing off: passed on as it came
    r = await gw.client.post(
        "/v1/chat/completions", json=body,
        headers={**gw.bearer(acme.api_key), "traceparent": "00-zz", "x-request-id": "mine"},
    )  # fmt: skip
    seen = gw.engine.headers[-1]
    assert "traceparent" not in seen
    assert seen["x-request-id"] == r.headers["x-request-id"] != "mine"  # the gateway's own id


async def test_a_streamed_request_is_one_trace_with_a_span_per_phase(
    inprocess_gateway: InProcessFactory, tiny_adapter_paths: tuple[str, ...]
) -> None:
    gw = await inprocess_gateway()
    exporter = InMemorySpanExporter()
    gw.state.tracing = Tracing.with_processor(SimpleSpanProcessor(exporter))
    acme = await gw.seed_tenant("acme", adapter=tiny_adapter_paths[0])
    r = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={**gw.bearer(acme.api_key), "traceparent": TP},
    )
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "POST /v1/chat/completions")
    attributes = dict(root.attributes or {})
    assert attributes["loragate.tenant"] == "acme"
    assert attributes["loragate.alias"] == "chat"
    assert attributes["loragate.release"] == acme.release
    assert attributes["loragate.arm"] == "stable"
    assert attributes["loragate.replica"] == "engine-0"
    assert attributes["loragate.request_id"] == r.headers["x-request-id"]
    assert root.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    names = {s.name for s in spans if s is not root}
    assert names >= PHASES, names
    assert names & {"engine.queue", "adapter.load"}
    seen = gw.engine.headers[-1]
    assert seen["traceparent"] == f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-01"
    assert seen["x-request-id"] == r.headers["x-request-id"]
    gw.state.tracing.shutdown()


async def test_a_stream_waiting_for_its_first_token_gets_keep_alive_comments(
    inprocess_gateway: InProcessFactory,
) -> None:
    gw = await inprocess_gateway(sse_keepalive_s=0.05)
    acme = await gw.seed_tenant("acme", adapter=None)
    gw.engine.script(Step("ok", tokens=2, delay_s=1.0))
    r = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers=gw.bearer(acme.api_key),
    )
    assert r.status_code == 200
    first_data = r.text.index("data: ")
    assert ": keep-alive\n\n" in r.text[:first_data]
    assert ": keep-alive" not in r.text[first_data:]  # none once tokens flow
    assert _events(r.text)[-1] == "[DONE]"
    # a fast stream gets none
    r = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers=gw.bearer(acme.api_key),
    )
    assert _events(r.text)[-1] == "[DONE]"


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpSink]:
    sink = OtlpSink(keep=True).start()
    yield sink
    sink.close()


async def test_spans_are_exported_over_otlp_http(
    inprocess_gateway: InProcessFactory, otlp_receiver: OtlpSink
) -> None:
    gw = await inprocess_gateway(otlp_endpoint=otlp_receiver.endpoint, otel_service_name="lg-test")
    acme = await gw.seed_tenant("acme", adapter=None)
    r = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers=gw.bearer(acme.api_key),
    )
    assert r.status_code == 200
    assert gw.state.tracing is not None
    assert await asyncio.to_thread(gw.state.tracing.provider.force_flush, 10_000)
    received = await asyncio.to_thread(otlp_receiver.wait_for, bool, 10)
    assert {resource["service.name"] for resource, _ in received} == {"lg-test"}
    spans = [span for _, span in received]
    root = next(s for s in spans if s.name == "POST /v1/chat/completions")
    attributes = {a.key: a.value.string_value for a in root.attributes}
    assert attributes["loragate.tenant"] == "acme"
    assert attributes["loragate.request_id"] == r.headers["x-request-id"]
    assert {s.name for s in spans if s.parent_span_id == root.span_id} >= PHASES
