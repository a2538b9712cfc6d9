"""The request filter and renderer: every field is either checked, refused by name, or unknown."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ApiError
from gateway.serving.render import (
    FORBIDDEN,
    Limits,
    Rendering,
    parse_chat_request,
    render_engine_body,
)

MSG = [{"role": "user", "content": "hi"}]


def _ok(**extra: Any) -> dict[str, Any]:
    return {"model": "support", "messages": MSG, **extra}


def _error(body: object, limits: Limits | None = None) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat_request(body, limits or Limits())
    return info.value


def test_minimal_request_parses() -> None:
    chat = parse_chat_request(_ok(), Limits())
    assert chat.alias == "support"
    assert chat.stream is False
    assert chat.max_tokens is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG}, "model"),
        ({"model": "", "messages": MSG}, "model"),
        ({"model": 3, "messages": MSG}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (_ok(stream="yes"), "stream"),
        (_ok(temperature=9), "temperature"),
        (_ok(temperature=True), "temperature"),
        (_ok(max_tokens=0), "max_tokens"),
        (_ok(max_tokens="10"), "max_tokens"),
        (_ok(n=2), "n"),
        (_ok(stop=["a", "b", "c", "d", "e"]), "stop"),
        (_ok(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (_ok(surprise=1), "surprise"),
    ],
)
def test_invalid_fields_are_named(body: dict[str, Any], param: str) -> None:
    error = _error(body)
    assert error.code == "invalid_request"
    assert error.status == 400
    assert error.param == param


def test_body_must_be_an_object() -> None:
    assert _error([1, 2]).code == "invalid_request"


@pytest.mark.parametrize("field", sorted(FORBIDDEN))
def test_engine_steering_fields_are_forbidden(field: str) -> None:
    error = _error(_ok(**{field: "x"}))
    assert error.code == "forbidden_parameter"
    assert error.param == field


def test_max_tokens_over_the_tenant_cap() -> None:
    error = _error(_ok(max_tokens=500), Limits(max_tokens_cap=100))
    assert error.code == "max_tokens_exceeds_limit"
    assert error.param == "max_tokens"


def test_too_many_messages() -> None:
    error = _error({"model": "m", "messages": MSG * 3}, Limits(max_messages=2))
    assert error.param == "messages"


def _rendering(**kw: Any) -> Rendering:
    base: dict[str, Any] = {
        "engine_model": "lg-acme-triage-v1-abc",
        "system_prompt": "be terse",
        "defaults": {"temperature": 0.2, "max_tokens": 64},
        "response_schema": None,
        "cache_salt": "salt-acme",
        "max_tokens_cap": None,
    }
    base.update(kw)
    return Rendering(**base)


def test_render_applies_prompt_model_salt_and_defaults() -> None:
    chat = parse_chat_request(_ok(temperature=0.7), Limits())
    body = render_engine_body(chat, _rendering())
    assert body["model"] == "lg-acme-triage-v1-abc"
    assert body["messages"][0] == {"role": "system", "content": "be terse"}
    assert body["messages"][1:] == MSG
    assert body["cache_salt"] == "salt-acme"
    assert body["temperature"] == 0.7  # the client's value wins over the release default
    assert body["max_tokens"] == 64
    assert "stream" not in body


def test_render_streaming_always_asks_for_usage() -> None:
    chat = parse_chat_request(_ok(stream=True), Limits())
    body = render_engine_body(chat, _rendering())
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert chat.include_usage is False


def test_render_schema_overrides_client_response_format() -> None:
    chat = parse_chat_request(_ok(response_format={"type": "text"}), Limits())
    schema = {"type": "object"}
    body = render_engine_body(chat, _rendering(response_schema=schema))
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == schema


def test_render_caps_max_tokens_when_unset() -> None:
    chat = parse_chat_request(_ok(), Limits(max_tokens_cap=32))
    body = render_engine_body(chat, _rendering(defaults={}, max_tokens_cap=32))
    assert body["max_tokens"] == 32


# JSON values two levels deep, built without st.recursive (whose "extend does not use its
# argument" check misfires at random, and warnings are errors here).
_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
_level1 = (
    _scalars
    | st.lists(_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=8), _scalars, max_size=3)
)
json_values = (
    _level1
    | st.lists(_level1, max_size=3)
    | st.dictionaries(st.text(max_size=8), _level1, max_size=3)
)


# A loaded CI box must not turn slow generation into a failure: the test has no time target.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_fuzz_filter_never_lets_engine_fields_through(body: dict[str, Any]) -> None:
    """Whatever the body, the result is a validated request or an ApiError; never a crash, and the
    engine model and salt always come from the release."""
    body.setdefault("model", "m")
    body.setdefault("messages", copy.deepcopy(MSG))  # examples must not share a mutable list
    try:
        chat = parse_chat_request(body, Limits())
    except ApiError as error:
        status = error.status
    else:
        status = 200
    if status != 200:
        assert status == 400
        return
    rendered = render_engine_body(chat, _rendering())
    assert rendered["model"] == "lg-acme-triage-v1-abc"
    assert rendered["cache_salt"] == "salt-acme"
    assert not (set(rendered) & FORBIDDEN - {"cache_salt"})
