"""Validate a tenant's `/v1/completions` request and render the engine request (pure: no I/O).

The release's prompt version decides how its system prompt meets a raw prompt:

    prefix   the system prompt, a blank line, then the tenant's prompt (the default)
    raw      the tenant's prompt alone
    refuse   400 `completions_forbidden`: this model is served through chat only

Sampling fields, stop lists, logit bias and the vLLM output extensions are checked exactly as for
chat (`gateway.serving.render`); `echo`, `suffix` and token-id prompts are not accepted (echo would
hand back the system prompt; a suffix has no meaning to a chat model's release).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import ApiError
from gateway.serving.render import (
    ChatRequest,
    Limits,
    Rendering,
    _base_body,
    _check_keys,
    _check_max_tokens,
    _check_min_tokens,
    _check_stream,
    _check_user,
    _common_fields,
)

MAX_PROMPT_CHARS = 256 * 1024
ALLOWED = frozenset(
    {
        "model",
        "prompt",
        "stream",
        "stream_options",
        "max_tokens",
        "stop",
        "user",
        "logprobs",
        "logit_bias",
        "metadata",
        "store",
        "service_tier",
    }
)
MODES = ("prefix", "raw", "refuse")


@dataclass(frozen=True)
class CompletionRequest(ChatRequest):
    """A validated completions request; `messages` stays empty, `prompt` is the raw text."""

    prompt: str = ""


def parse_completion_request(body: object, limits: Limits) -> CompletionRequest:
    body = _check_keys(body, ALLOWED)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]  # the SDK's one-prompt list
    if not isinstance(prompt, str) or not prompt or len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(
            "invalid_request",
            f"`prompt` must be one non-empty string of at most {MAX_PROMPT_CHARS} characters.",
            param="prompt",
        )
    stream, include_usage = _check_stream(body)
    fields = _common_fields(body, limits)
    max_tokens = _check_max_tokens(body, limits)
    _check_min_tokens(fields, max_tokens)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= 5:
            raise ApiError(
                "invalid_request", "`logprobs` must be an integer between 0 and 5.", "logprobs"
            )
        fields["logprobs"] = logprobs
    return CompletionRequest(
        alias=body["model"],
        messages=[],
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        user=_check_user(body),
        fields=fields,
        prompt=prompt,
    )


def render_completion_body(request: CompletionRequest, rendering: Rendering) -> dict[str, Any]:
    """The body sent to vLLM's /v1/completions."""
    mode = rendering.completions
    if mode == "refuse":
        raise ApiError(
            "completions_forbidden",
            "This model is served through chat completions only (its release refuses raw prompts).",
            param="prompt",
        )
    prompt = request.prompt
    if mode == "prefix" and rendering.system_prompt:
        prompt = rendering.system_prompt + "\n\n" + prompt
    body = _base_body(request, rendering)
    body["prompt"] = prompt
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body
