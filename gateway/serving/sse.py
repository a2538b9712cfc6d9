"""Server-sent events: an incremental parser for the engine's stream, the encoder for ours (pure).

parser = SseParser()
for payload in parser.feed(chunk_bytes):   # each payload is one event's `data` field
    ...
"""

from __future__ import annotations

from collections.abc import Iterator
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
