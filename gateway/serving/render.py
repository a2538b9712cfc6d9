"""Validate a tenant's chat request and render the engine request (pure: no I/O).

Only fields on the allow-list reach the engine. Fields that would let a tenant reach into the engine
(another adapter, the prefix cache, the chat template) are refused by name with
`forbidden_parameter`; anything else unknown is `invalid_request`, as the OpenAI API does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.errors import ApiError
from gateway.serving.tools import ToolPolicy, apply_tool_policy, check_tool_history, check_tools

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

# Fields a tenant may never set: they reach past this request's own output, into the engine
# (another adapter, the prefix cache, the chat template, scheduling, KV transfer, request ids) or
# past the release's system prompt (prompt logprobs, echo, truncation). Table in NOTES-19.md.
FORBIDDEN = frozenset(
    {
        "lora_request",
        "lora_path",
        "lora_name",
        "lora_int_id",
        "cache_salt",
        "cache_hint",
        "chat_template",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "add_special_tokens",
        "documents",
        "mm_processor_kwargs",
        "media_io_kwargs",
        "kv_transfer_params",
        "ec_transfer_params",
        "priority",
        "request_id",
        "session_id",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "structured_outputs",
        "prompt_logprobs",
        "prompt_embeds",
        "vllm_xargs",
        "logits_processors",
        "adapter",
        "adapters",
        "extra_body",
        "truncate_prompt_tokens",
        "truncation_side",
        "echo",
        "return_token_ids",
        "use_beam_search",
    }
)

# Sampling fields passed through after type checks: name -> (kind, low, high).
NUMERIC: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "presence_penalty": (float, -2.0, 2.0),
    "frequency_penalty": (float, -2.0, 2.0),
    "top_k": (int, -1, 1000),
    "min_p": (float, 0.0, 1.0),
    "repetition_penalty": (float, 0.0, 2.0),
    "seed": (int, -(2**63), 2**63 - 1),
    "top_logprobs": (int, 0, 20),
    "n": (int, 1, 128),
    "min_tokens": (int, 0, 1_000_000),
    "length_penalty": (float, -10.0, 10.0),
}
# vLLM extensions that only shape this request's own output and are bounded by the tenant's token
# limits: passed through after type checks. Booleans, then lists: name -> (item kind, max items).
FLAGS = frozenset(
    {
        "ignore_eos",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "include_stop_str_in_output",
        "return_tokens_as_token_ids",
    }
)
LISTS: dict[str, tuple[type, int]] = {
    "stop_token_ids": (int, 64),
    "bad_words": (str, 64),
    "allowed_token_ids": (int, 4096),
}
MAX_LOGIT_BIAS = 300
ALLOW_TOOLS = ToolPolicy()
OTHER_ALLOWED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "user",
        "response_format",
        "logprobs",
        "logit_bias",
        "metadata",
        "store",
        "parallel_tool_calls",
        "tools",
        "tool_choice",
        "service_tier",
    }
)


@dataclass(frozen=True)
class ChatRequest:
    """A validated tenant request; `fields` are the pass-through fields, already checked."""

    alias: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    user: str | None
    fields: dict[str, Any]


@dataclass(frozen=True)
class Limits:
    max_messages: int = 256
    max_n: int = 1
    max_tokens_cap: int | None = None


def _bad(message: str, param: str | None) -> ApiError:
    return ApiError("invalid_request", message, param=param)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(float(value))  # type: ignore[arg-type]


def _check_content(content: object, param: str) -> None:
    if content is None or isinstance(content, str):
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad("Only text content parts are supported.", f"{param}[{j}]")
            if not isinstance(part.get("text"), str):
                raise _bad("A text part needs a string `text`.", f"{param}[{j}].text")
        return
    raise _bad("Message content must be a string or a list of text parts.", param)


def _check_messages(value: object, limits: Limits) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad("`messages` must be a non-empty array.", "messages")
    if len(value) > limits.max_messages:
        raise _bad(f"At most {limits.max_messages} messages are allowed.", "messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad("Each message must be an object.", param)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a dict or list is unhashable
            raise _bad(
                "`role` must be one of system, developer, user, assistant, tool.", param + ".role"
            )
        if "content" not in message and role != "assistant":
            raise _bad("Missing required field `content`.", param + ".content")
        _check_content(message.get("content"), param + ".content")
        for key in message:
            if key not in {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}:
                raise _bad(f"Unrecognized message field `{key}`.", f"{param}.{key}")
        out.append(message)
    return out


def _check_keys(body: object, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None)
    for key in body:
        if not isinstance(key, str):
            raise _bad("Field names must be strings.", None)
        if key in FORBIDDEN or key.lower() in FORBIDDEN:
            raise ApiError("forbidden_parameter", f"The field `{key}` may not be set.", param=key)
        if key not in allowed and key not in NUMERIC and key not in FLAGS and key not in LISTS:
            raise _bad(f"Unrecognized request argument supplied: {key}", key)
    alias = body.get("model")
    if not isinstance(alias, str) or not alias:
        raise _bad("`model` must be a non-empty string.", "model")
    return body


def _check_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("`stream` must be a boolean.", "stream")
    include_usage = False
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
            raise _bad("`stream_options` accepts only `include_usage`.", "stream_options")
        value = stream_options.get("include_usage", False)
        if not isinstance(value, bool):
            raise _bad("`include_usage` must be a boolean.", "stream_options.include_usage")
        include_usage = value
    return stream, include_usage


def _common_fields(body: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Sampling, stop, logit bias and the vLLM output extensions shared by chat and completions."""
    fields: dict[str, Any] = {}
    for name, (kind, low, high) in NUMERIC.items():
        if name not in body or body[name] is None:
            continue
        value = body[name]
        ok = _is_int(value) if kind is int else _is_number(value)
        if not ok or not low <= value <= high:
            raise _bad(f"`{name}` must be a {kind.__name__} between {low:g} and {high:g}.", name)
        fields[name] = value
    if fields.get("n", 1) > limits.max_n:
        raise _bad(f"`n` may be at most {limits.max_n}.", "n")
    for name in FLAGS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise _bad(f"`{name}` must be a boolean.", name)
        fields[name] = value
    for name, (item, most) in LISTS.items():
        value = body.get(name)
        if value is None:
            continue
        good = _is_int if item is int else (lambda v: isinstance(v, str) and 0 < len(v) <= 256)
        if not isinstance(value, list) or len(value) > most or not all(good(v) for v in value):
            raise _bad(f"`{name}` must be a list of at most {most} {item.__name__}s.", name)
        if item is int and any(v < 0 for v in value):
            raise _bad(f"`{name}` holds token ids (non-negative).", name)
        fields[name] = value
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if (
            not isinstance(stop, list)
            or len(stop) > 4
            or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in stop)
        ):
            raise _bad("`stop` must be a string or up to 4 strings.", "stop")
        fields["stop"] = stop
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS:
            raise _bad(f"`logit_bias` maps at most {MAX_LOGIT_BIAS} token ids.", "logit_bias")
        for token, value in bias.items():
            if not (token.isascii() and token.isdigit() and len(token) <= 9):
                raise _bad("`logit_bias` keys are token ids.", "logit_bias")
            if not _is_number(value) or not -100 <= value <= 100:
                raise _bad("`logit_bias` values are numbers between -100 and 100.", "logit_bias")
        if bias:
            fields["logit_bias"] = bias
    return fields


def _check_user(body: dict[str, Any]) -> str | None:
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise _bad("`user` must be a string of at most 256 characters.", "user")
    return user


def parse_chat_request(body: object, limits: Limits) -> ChatRequest:
    """Validate a decoded JSON body; raise ApiError naming the offending field."""
    body = _check_keys(body, OTHER_ALLOWED)
    alias = body["model"]
    messages = _check_messages(body.get("messages"), limits)
    stream, include_usage = _check_stream(body)
    fields = _common_fields(body, limits)
    max_tokens = _check_max_tokens(body, limits)
    _check_min_tokens(fields, max_tokens)
    user = _check_user(body)
    if body.get("logprobs") is not None:
        if not isinstance(body["logprobs"], bool):
            raise _bad("`logprobs` must be a boolean.", "logprobs")
        fields["logprobs"] = body["logprobs"]
    response_format = body.get("response_format")
    if response_format is not None:
        rtype = response_format.get("type") if isinstance(response_format, dict) else None
        if not isinstance(rtype, str) or rtype not in {"text", "json_object", "json_schema"}:
            raise _bad(
                "`response_format.type` must be text, json_object or json_schema.",
                "response_format",
            )
        fields["response_format"] = response_format
    fields.update(check_tools(body))
    check_tool_history(messages)
    return ChatRequest(
        alias=alias,
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        user=user,
        fields=fields,
    )


def _check_min_tokens(fields: dict[str, Any], max_tokens: int | None) -> None:
    if max_tokens is not None and fields.get("min_tokens", 0) > max_tokens:
        raise _bad("`min_tokens` may not exceed `max_tokens`.", "min_tokens")


def _check_max_tokens(body: dict[str, Any], limits: Limits) -> int | None:
    value: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        raw = body.get(name)
        if raw is None:
            continue
        if not _is_int(raw) or raw < 1:
            raise _bad(f"`{name}` must be a positive integer.", name)
        if limits.max_tokens_cap is not None and raw > limits.max_tokens_cap:
            raise ApiError(
                "max_tokens_exceeds_limit",
                f"`{name}` may be at most {limits.max_tokens_cap} for this tenant.",
                param=name,
            )
        value = raw if value is None else min(value, raw)
    return value


@dataclass(frozen=True)
class Rendering:
    """What the release contributes to an engine request."""

    engine_model: str  # engine adapter name, or the base model
    system_prompt: str | None
    defaults: dict[str, Any]  # prompt-version then release params; the client's values win
    response_schema: dict[str, Any] | None
    cache_salt: str
    max_tokens_cap: int | None
    tools: ToolPolicy = ALLOW_TOOLS
    completions: str = "prefix"  # how /v1/completions applies the system prompt, or "refuse"


def render_engine_body(request: ChatRequest, rendering: Rendering) -> dict[str, Any]:
    """Build the body sent to vLLM. The tenant never chooses the engine model or the salt."""
    messages = request.messages
    if rendering.system_prompt:
        messages = [{"role": "system", "content": rendering.system_prompt}, *messages]
    apply_tool_policy(request.fields, rendering.tools)
    body = _base_body(request, rendering)
    body["messages"] = messages
    choice = request.fields.get("tool_choice")
    forced_call = choice == "required" or isinstance(choice, dict)
    # The release's schema governs content; a forced tool call has none (its arguments follow
    # the tool's own parameters schema).
    if rendering.response_schema is not None and not forced_call:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "release_schema", "schema": rendering.response_schema},
        }
    if request.stream:
        body["stream"] = True
        # Always ask for usage: the gateway meters tokens; the chunk is dropped if not requested.
        body["stream_options"] = {"include_usage": True}
    return body


def _base_body(request: ChatRequest, rendering: Rendering) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, value in rendering.defaults.items():
        if key in NUMERIC or key in FLAGS or key in {"stop", "max_tokens"}:
            body[key] = value
    body.update(request.fields)
    body["model"] = rendering.engine_model
    body["cache_salt"] = rendering.cache_salt
    max_tokens = request.max_tokens
    if max_tokens is None:
        default = body.pop("max_tokens", None)
        max_tokens = default if isinstance(default, int) else rendering.max_tokens_cap
    else:
        body.pop("max_tokens", None)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body
