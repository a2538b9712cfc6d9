"""SSE parsing: split anywhere, CRLF, comments, multi-line data; fuzzed against a reference."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.serving.sse import (
    DONE,
    EventReader,
    ModelRewrite,
    SseParser,
    SseProtocolError,
    encode_json_event,
    error_event,
)


def _feed_all(chunks: list[bytes]) -> list[bytes]:
    parser = SseParser()
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def test_events_split_across_reads() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    for cut in range(len(stream)):
        assert _feed_all([stream[:cut], stream[cut:]]) == [b'{"a":1}', b'{"b":2}', DONE]


def test_crlf_comments_and_multiline() -> None:
    stream = b": keep-alive\r\n\r\ndata: one\r\ndata: two\r\n\r\n"
    assert _feed_all([stream]) == [b"one\ntwo"]


def test_oversized_event_is_refused() -> None:
    parser = SseParser()
    with pytest.raises(SseProtocolError):
        list(parser.feed(b"data: " + b"x" * (5 * 1024 * 1024)))


def test_error_event_shape() -> None:
    event = error_event("engine_error", "boom")
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    body = orjson.loads(event[6:])
    assert body == {
        "error": {"message": "boom", "type": "api_error", "param": None, "code": "engine_error"}
    }


payloads = st.lists(
    st.dictionaries(
        st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), max_size=3
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(payloads, st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_fuzz_any_split_round_trips(objs: list[dict[str, object]], cuts: list[int]) -> None:
    stream = b"".join(encode_json_event(o) for o in objs)
    chunks: list[bytes] = []
    rest = stream
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    assert [orjson.loads(p) for p in _feed_all(chunks)] == objs


# --- the byte path: `model` rewritten without parsing (gateway/serving/sse.py: ModelRewrite) ---

ENGINE = "t0-a-v1-3f2a"
ALIAS = "chat"


def _chunk(content: str, *, index: int = 0, model: str = ENGINE) -> dict[str, object]:
    """The layout vLLM's `model_dump_json(exclude_unset=True)` gives a chat chunk."""
    return {
        "id": "chatcmpl-8c1",
        "object": "chat.completion.chunk",
        "created": 1795000000,
        "model": model,
        "choices": [
            {"index": index, "delta": {"content": content}, "logprobs": None, "finish_reason": None}
        ],
    }


USAGE = {
    "id": "chatcmpl-8c1",
    "object": "chat.completion.chunk",
    "created": 1795000000,
    "model": ENGINE,
    "choices": [],
    "usage": {"prompt_tokens": 12, "total_tokens": 19, "completion_tokens": 7},
}


def _relayed(chunks: list[bytes], rewrite: ModelRewrite | None) -> tuple[bytes, list[str]]:
    """What the relay sends for these engine reads, and how each event got through: every
    payload the reader hands out is rewritten by bytes when it can be, else parsed (as the
    relay's parsing path does: the alias set, serialized again)."""
    reader = EventReader(rewrite)
    out: list[bytes] = []
    how: list[str] = []
    for chunk in chunks:
        ready, payloads = reader.feed(chunk)
        if ready:
            out.append(ready)
            how.append("block")
        for payload in payloads:
            if payload == DONE:
                how.append("done")
                continue
            fast = reader.rewrite.event(payload) if reader.rewrite is not None else None
            if fast is not None:
                out.append(b"data: " + fast + b"\n\n")
                how.append("event")
                continue
            obj = orjson.loads(payload)
            obj["model"] = ALIAS
            out.append(encode_json_event(obj))
            how.append("parsed")
    assert not reader.pending()
    return b"".join(out), how


def _expected(objs: list[dict[str, object]]) -> bytes:
    return b"".join(encode_json_event({**o, "model": ALIAS}) for o in objs)


def test_rewrite_replaces_only_the_model_field() -> None:
    tricky = ['"model":"t0-a-v1-3f2a"', ENGINE, '"usage":', "data: x\n\ndata: y", "é \\ \u2028"]
    objs = [_chunk(text, index=i) for i, text in enumerate(tricky)]
    stream = b"".join(encode_json_event(o) for o in objs)
    out, how = _relayed([stream], ModelRewrite(ENGINE, ALIAS))
    assert out == _expected(objs)
    assert how == ["block"]  # one read of plain chunks: no event parsed
    assert out.count(ENGINE.encode()) == 2  # the two contents that name it are untouched


def test_usage_error_and_done_are_parsed_the_rest_passes_as_bytes() -> None:
    objs = [_chunk("Hel"), _chunk("lo"), USAGE]
    stream = b"".join(encode_json_event(o) for o in objs) + b"data: [DONE]\n\n"
    out, how = _relayed([stream], ModelRewrite(ENGINE, ALIAS))
    assert out == _expected(objs)
    assert how == ["event", "event", "parsed", "done"]
    error = encode_json_event({"error": {"message": "boom", "code": 500}})
    assert ModelRewrite(ENGINE, ALIAS).block(error) is None
    assert ModelRewrite(ENGINE, ALIAS).event(error[6:-2]) is None


def test_another_layout_falls_back_to_parsing() -> None:
    rewrite = ModelRewrite(ENGINE, ALIAS)
    other_name = encode_json_event(_chunk("hi", model="served-name"))
    assert rewrite.block(other_name) is None
    spaced = b'data: {"model": "' + ENGINE.encode() + b'", "choices": [{}]}\n\n'
    assert rewrite.block(spaced) is None  # not vLLM's compact layout
    two_lines = b'data: {"a":1,\ndata: "model":"' + ENGINE.encode() + b'"}\n\n'
    assert rewrite.block(two_lines) is None
    comment = b": ping\n\n" + encode_json_event(_chunk("x"))
    assert rewrite.block(comment) is None
    out, how = _relayed([other_name], rewrite)
    assert orjson.loads(out[6:])["model"] == ALIAS
    assert how == ["parsed"]


def test_every_split_of_a_stream_gives_the_same_bytes() -> None:
    objs = [_chunk("Hi"), _chunk(" there"), USAGE]
    stream = b"".join(encode_json_event(o) for o in objs) + b"data: [DONE]\n\n"
    for a in range(len(stream)):
        for b in range(a, len(stream), 7):
            out, how = _relayed([stream[:a], stream[a:b], stream[b:]], ModelRewrite(ENGINE, ALIAS))
            assert out == _expected(objs), (a, b)
            assert how.count("parsed") == 1, (a, b, how)
            assert how[-1] == "done", (a, b, how)


def test_crlf_stream_goes_to_the_parser_from_then_on() -> None:
    objs = [_chunk("a"), _chunk("b"), _chunk("c")]
    lf = encode_json_event(objs[0])
    crlf = b"".join(encode_json_event(o) for o in objs[1:]).replace(b"\n", b"\r\n")
    stream = lf + crlf
    cut = len(lf) + 10  # the first read ends inside the first CRLF event
    out, how = _relayed([stream[:cut], stream[cut:]], ModelRewrite(ENGINE, ALIAS))
    assert out == _expected(objs)
    assert how == ["block", "parsed", "parsed"]


def test_an_event_split_across_reads_is_bounded() -> None:
    reader = EventReader(ModelRewrite(ENGINE, ALIAS))
    reader.feed(b"data: {")
    with pytest.raises(SseProtocolError):
        reader.feed(b"x" * (5 * 1024 * 1024))


pieces = ["a", '"', "\\", "\n", ":", "é", "model", ENGINE, "usage", "data: ", "}"]
texts = st.lists(st.sampled_from(pieces), max_size=12).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(texts, min_size=1, max_size=6), st.lists(st.integers(1, 60), max_size=12))
def test_fuzz_any_content_any_split(contents: list[str], cuts: list[int]) -> None:
    objs: list[dict[str, object]] = [_chunk(c, index=i) for i, c in enumerate(contents)]
    objs.append(USAGE)
    stream = b"".join(encode_json_event(o) for o in objs) + b"data: [DONE]\n\n"
    chunks: list[bytes] = []
    rest = stream
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    out, how = _relayed(chunks, ModelRewrite(ENGINE, ALIAS))
    assert out == _expected(objs)
    assert how.count("parsed") == 1  # only the usage chunk
