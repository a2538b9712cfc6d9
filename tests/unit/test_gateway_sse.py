"""SSE parsing: split anywhere, CRLF, comments, multi-line data; fuzzed against a reference."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.serving.sse import DONE, SseParser, SseProtocolError, encode_json_event, error_event


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
