"""Server-sent events: an incremental parser for the engine's stream, the encoder for ours, and
the byte-level `model` rewrite that lets a stream pass without being parsed (pure).

parser = SseParser()
for payload in parser.feed(chunk_bytes):   # each payload is one event's `data` field
    ...
reader = EventReader(ModelRewrite(engine_model, alias))   # None: parse every event
ready, payloads = reader.feed(chunk_bytes)  # whole events passed as rewritten bytes, or payloads
out = reader.rewrite.event(payload)         # one payload rewritten, or None: parse it
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 4 * 1024 * 1024


class SseProtocolError(Exception):
    """The upstream stream is not valid SSE (or an event is absurdly large)."""


class SseParser:
    """Splits a byte stream into event payloads; tolerates CRLF and events split across reads."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end + 2 :]
            payload = _data_of(event)
            if payload is not None:
                yield payload
        if len(buffer) > MAX_EVENT_BYTES:
            raise SseProtocolError("event too large")
        self._buffer = buffer

    def pending(self) -> bool:
        return bool(self._buffer.strip())


def _data_of(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the one-line event every engine sends
    lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    parts = [line[5:].removeprefix(b" ") for line in lines]
    return b"\n".join(parts)


def encode_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def encode_json_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(code: str, message: str, error_type: str = "api_error") -> bytes:
    """The single event that ends a stream which failed after it started (no [DONE] follows)."""
    return encode_json_event(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    )


# What makes an event one the gateway must read: the usage it meters, an engine error, a chunk
# without choices (dropped or passed on by the parsing relay). As raw bytes these appear only as
# keys: inside a JSON string every `"` is escaped, so `"usage":` cannot come from generated text.
_MUST_PARSE = (b'"usage":', b'"error":', b'"choices":[]')


class ModelRewrite:
    """vLLM serializes every chunk itself (`model_dump_json`: compact, `"model":"<name>"` once,
    at the top level, before `choices`), so the tenant's alias can replace the engine's name with
    a byte replace instead of a JSON round trip. Anything else (a different layout, CRLF, an
    event that carries usage or an error, several `data:` lines) answers None: parse it."""

    __slots__ = ("pattern", "replacement")

    def __init__(self, engine_model: str, alias: str) -> None:
        self.pattern = b'"model":' + orjson.dumps(engine_model)
        self.replacement = b'"model":' + orjson.dumps(alias)

    def block(self, block: bytes) -> bytes | None:
        """Whole events (`block` ends with a blank line), each one `data: {...}` line with the
        engine's name once: all of them rewritten, or None."""
        n = block.count(b"\n\n")
        if (
            not n
            or not block.startswith(b"data: {")
            or block.count(b"\n") != 2 * n
            or block.count(b"\n\ndata: {") != n - 1
            or block.count(self.pattern) != n
            or b"\r" in block
            or any(marker in block for marker in _MUST_PARSE)
        ):
            return None
        return block.replace(self.pattern, self.replacement)

    def event(self, payload: bytes) -> bytes | None:
        """One event's data with the engine's name rewritten, or None."""
        if (
            not payload.startswith(b"{")
            or payload.count(self.pattern) != 1
            or any(marker in payload for marker in _MUST_PARSE)
        ):
            return None
        return payload.replace(self.pattern, self.replacement)


_NOTHING: tuple[bytes, ...] = ()


class EventReader:
    """Engine reads in, whole events out: the events of a read leave as one block of rewritten
    bytes when `ModelRewrite.block` allows it, else as payloads (an event split across reads waits
    for its end). Without a rewrite, or once the stream uses CRLF, it is the parser alone."""

    __slots__ = ("_parser", "_pending", "rewrite")

    def __init__(self, rewrite: ModelRewrite | None) -> None:
        self.rewrite = rewrite
        self._parser = SseParser()
        self._pending = b""

    def feed(self, chunk: bytes) -> tuple[bytes, Iterable[bytes]]:
        if self.rewrite is None or b"\r" in chunk:
            if self._pending:
                chunk, self._pending = self._pending + chunk, b""
            self.rewrite = None
            return b"", self._parser.feed(chunk)
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n\n") + 2
        if cut < 2:
            if len(data) > MAX_EVENT_BYTES:
                raise SseProtocolError("event too large")
            self._pending = data
            return b"", _NOTHING
        block, self._pending = data[:cut], data[cut:]
        rewritten = self.rewrite.block(block)
        if rewritten is not None:
            return rewritten, _NOTHING
        return b"", self._parser.feed(block)

    def pending(self) -> bool:
        return bool(self._pending.strip()) or self._parser.pending()
