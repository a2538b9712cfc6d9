"""Tools, vLLM extensions, logit bias, per-tenant n, completions rendering and trace context: the
pure request filter (gateway.serving.render, tools, completion_render; gateway.observability.tracing
for the traceparent and span building)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.errors import ApiError
from gateway.observability.tracing import Tracing, parse_traceparent, valid_traceparent
from gateway.serving.completion_render import parse_completion_request, render_completion_body
from gateway.serving.render import (
    FLAGS,
    FORBIDDEN,
    Limits,
    Rendering,
    parse_chat_request,
    render_engine_body,
)
from gateway.serving.tools import ToolPolicy

USER = {"role": "user", "content": "weather?"}
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [USER], **extra}


def _rendering(**overrides: Any) -> Rendering:
    values: dict[str, Any] = {
        "engine_model": "lg-acme-chat-v1-abc",
        "system_prompt": "You are Acme.",
        "defaults": {},
        "response_schema": None,
        "cache_salt": "salt",
        "max_tokens_cap": 64,
    }
    values.update(overrides)
    return Rendering(**values)


def _error(body: object, limits: Limits | None = None) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat_request(body, limits or Limits())
    return info.value


@pytest.mark.parametrize(
    "choice",
    ["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}],
)
def test_tools_and_every_tool_choice_reach_the_engine_unchanged(choice: object) -> None:
    chat = parse_chat_request(
        _body(tools=[TOOL], tool_choice=choice, parallel_tool_calls=False), Limits()
    )
    body = render_engine_body(chat, _rendering())
    assert body["tools"] == [TOOL]
    assert body["tool_choice"] == choice
    assert body["parallel_tool_calls"] is False


def test_a_tool_history_turn_is_accepted() -> None:
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    chat = parse_chat_request(_body(messages=messages, tools=[TOOL]), Limits())
    assert render_engine_body(chat, _rendering())["messages"][1:] == messages


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [TOOL, TOOL]}, "tools[1]"),
        ({"tools": "x"}, "tools"),
        ({"tools": [{**TOOL, "function": {**TOOL["function"], "parameters": []}}]},
         "tools[0].function.parameters"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"messages": [USER, {"role": "tool", "tool_call_id": "ghost", "content": "x"}]},
         "messages[1].tool_call_id"),
        ({"messages": [USER, {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
        ({"messages": [USER, {"role": "assistant", "tool_calls": [{"id": "c"}]}]},
         "messages[1].tool_calls[0].function"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]},
         "messages[0].tool_calls"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
    ],
)  # fmt: skip
def test_bad_tools_and_extensions_get_the_envelope_naming_the_field(
    extra: dict[str, Any], param: str
) -> None:
    error = _error(_body(**extra))
    assert (error.status, error.code, error.param) == (400, "invalid_request", param)
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}  # type: ignore[call-overload]


def test_output_extensions_pass_through() -> None:
    extra: dict[str, Any] = dict.fromkeys(FLAGS, True)
    extra.update(min_tokens=2, max_tokens=8, stop_token_ids=[1, 2], bad_words=["x"],
                 repetition_penalty=1.1, logit_bias={"7": -100, "9": 2.5}, seed=3,
                 stop=["a", "b"])  # fmt: skip
    body = render_engine_body(parse_chat_request(_body(**extra), Limits()), _rendering())
    for name, value in extra.items():
        assert body[name] == value, name


@pytest.mark.parametrize(
    "name",
    ["request_id", "priority", "kv_transfer_params", "chat_template", "lora_request", "echo",
     "prompt_logprobs", "truncate_prompt_tokens", "return_token_ids", "logits_processors"],
)  # fmt: skip
def test_engine_steering_extensions_stay_forbidden(name: str) -> None:
    assert name in FORBIDDEN
    error = _error(_body(**{name: 1}))
    assert (error.code, error.param) == ("forbidden_parameter", name)


def test_n_is_capped_per_tenant() -> None:
    assert parse_chat_request(_body(n=3), Limits(max_n=4)).fields["n"] == 3
    error = _error(_body(n=5), Limits(max_n=4))
    assert (error.code, error.param) == ("invalid_request", "n")


def test_a_release_that_forbids_tools_answers_tools_forbidden() -> None:
    chat = parse_chat_request(_body(tools=[TOOL]), Limits())
    with pytest.raises(ApiError) as info:
        render_engine_body(chat, _rendering(tools=ToolPolicy("forbid")))
    assert (info.value.status, info.value.code) == (400, "tools_forbidden")
    # without tools the same release answers
    plain = parse_chat_request(_body(), Limits())
    assert "tools" not in render_engine_body(plain, _rendering(tools=ToolPolicy("forbid")))


def test_a_release_may_allow_only_some_tools() -> None:
    policy = ToolPolicy("allow", ("lookup",))
    chat = parse_chat_request(_body(tools=[TOOL]), Limits())
    with pytest.raises(ApiError) as info:
        render_engine_body(chat, _rendering(tools=policy))
    assert (info.value.code, info.value.param) == ("tools_forbidden", "tools[0]")
    allowed = parse_chat_request(
        _body(tools=[{"type": "function", "function": {"name": "lookup"}}]), Limits()
    )
    assert render_engine_body(allowed, _rendering(tools=policy))["tools"]


def test_a_forced_tool_call_is_not_held_to_the_release_content_schema() -> None:
    schema = {"type": "object"}
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice, forced in (("auto", False), ("required", True), (named, True)):
        chat = parse_chat_request(_body(tools=[TOOL], tool_choice=choice), Limits())
        body = render_engine_body(chat, _rendering(response_schema=schema))
        assert ("response_format" in body) is not forced, choice


@pytest.mark.parametrize(
    ("mode", "prompt"),
    [("prefix", "You are Acme.\n\nOnce upon"), ("raw", "Once upon")],
)
def test_completions_apply_the_system_prompt_as_the_release_says(mode: str, prompt: str) -> None:
    request = parse_completion_request(
        {"model": "chat", "prompt": ["Once upon"], "stream": True, "ignore_eos": True}, Limits()
    )
    body = render_completion_body(request, _rendering(completions=mode))
    assert body["prompt"] == prompt
    assert body["model"] == "lg-acme-chat-v1-abc"
    assert body["cache_salt"] == "salt"
    assert body["max_tokens"] == 64
    assert body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "messages" not in body


def test_completions_refused_by_the_release() -> None:
    request = parse_completion_request({"model": "chat", "prompt": "x"}, Limits())
    with pytest.raises(ApiError) as info:
        render_completion_body(request, _rendering(completions="refuse"))
    assert (info.value.status, info.value.code) == (400, "completions_forbidden")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": "chat"}, "invalid_request", "prompt"),
        ({"model": "chat", "prompt": [1, 2]}, "invalid_request", "prompt"),
        ({"model": "chat", "prompt": "x", "echo": True}, "forbidden_parameter", "echo"),
        ({"model": "chat", "prompt": "x", "suffix": "y"}, "invalid_request", "suffix"),
        ({"model": "chat", "prompt": "x", "messages": []}, "invalid_request", "messages"),
        ({"model": "chat", "prompt": "x", "logprobs": 6}, "invalid_request", "logprobs"),
    ],
)
def test_bad_completion_requests(body: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_completion_request(body, Limits())
    assert (info.value.code, info.value.param) == (code, param)


TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    "value",
    [None, "", "garbage", TP.replace("00-", "ff-"), "00-" + "0" * 32 + "-b7ad6b7169203331-01",
     TP + "\r\nx-evil: 1", TP.upper()[:-2] + "zz"],
)  # fmt: skip
def test_invalid_traceparents_are_dropped(value: str | None) -> None:
    assert parse_traceparent(value) is None
    assert valid_traceparent(value) is None


def test_a_trace_continues_the_clients_traceparent_with_one_span_per_phase() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exporter))
    trace = tracing.begin("POST /v1/chat/completions", TP)
    assert valid_traceparent(TP) == TP
    sent = trace.traceparent()
    assert sent.startswith("00-0af7651916cd43dd8448eb211c80319c-")  # same trace id
    for phase in ("auth", "receive", "resolve", "limits", "engine.queue", "engine.call",
                  "first_token", "relay"):  # fmt: skip
        trace.mark(phase)
    trace.end({"loragate.tenant": "acme", "loragate.alias": "chat"}, None)
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "POST /v1/chat/completions")
    assert root.parent is not None
    assert root.parent.span_id == 0xB7AD6B7169203331
    assert root.attributes is not None
    assert root.attributes["loragate.tenant"] == "acme"
    children = [s for s in spans if s is not root]
    assert [s.name for s in children][:3] == ["auth", "receive", "resolve"]
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in children)
    for before, after in itertools.pairwise(children):
        assert before.end_time == after.start_time  # phases tile the request
    assert sent.split("-")[2] == f"{root.context.span_id:016x}"
    tracing.shutdown()


def test_unsampled_requests_build_no_spans_and_a_clients_sampled_flag_wins() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exporter), sample_ratio=0.0)
    quiet = tracing.begin("POST /v1/chat/completions", None)
    quiet.mark("auth")
    quiet.end({}, None)
    assert exporter.get_finished_spans() == ()
    sampled = tracing.begin("POST /v1/chat/completions", TP)  # flags 01: the client samples it
    sampled.mark("auth")
    sampled.end({}, None)
    assert {s.name for s in exporter.get_finished_spans()} == {"POST /v1/chat/completions", "auth"}
    tracing.shutdown()
