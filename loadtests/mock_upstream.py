"""A fast OpenAI-compatible mock of a vLLM engine, for measuring what sits in front of it.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies, chunked SSE) on a raw asyncio
protocol under uvloop, because a framework server would cost more CPU than the gateway we want to
measure: the bench checks it against the direct arm, so it must never be the bottleneck.

Routes: POST /v1/chat/completions (JSON, or SSE with `chunks` frames `interval_ms` apart, each frame
numbered so the client can count lost frames), GET /health, GET /v1/models (LoRA entries carry
`parent`, like vLLM), POST /v1/load_lora_adapter, POST /v1/unload_lora_adapter.

    python -m loadtests.mock_upstream --port 9001 --chunks 16 --interval-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


@dataclass
class MockConfig:
    base_model: str = "bench-base"
    chunks: int = 16
    interval_ms: float = 5.0
    loras: set[str] = field(default_factory=set)


def completion_body(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the mock engine."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        }
    )


def sse_frame(model: str, index: int) -> bytes:
    """One chat.completion.chunk; `content` carries the frame number for lost-frame counting."""
    payload = orjson.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": f"<{index}>"}, "finish_reason": None}],
        }
    )
    return b"data: " + payload + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class MockProtocol(asyncio.Protocol):
    """One connection; requests are served in order (streams hold the connection until done)."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.queue: deque[tuple[bytes, bytes, bytes]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            length = 0
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            method, path, _ = [*lines[0].split(b" "), b"", b""][:3]
            self.queue.append((method, path, body))
            self._drain()

    def _drain(self) -> None:
        while self.queue and not self.busy and self.transport is not None:
            method, path, body = self.queue.popleft()
            self._handle(method, path.split(b"?", 1)[0], body)

    def _send(self, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
        if self.transport is None:
            return
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (
            status,
            REASONS.get(status, b"OK"),
            content_type,
            len(body),
        )
        self.transport.write(head + body)

    def _handle(self, method: bytes, path: bytes, body: bytes) -> None:
        cfg = self.config
        if path == b"/v1/chat/completions" and method == b"POST":
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._send(400, b'{"error":{"message":"bad json","type":"BadRequest","code":400}}')
                return
            model = str(request.get("model") or cfg.base_model)
            if model != cfg.base_model and model not in cfg.loras:
                msg = b'{"error":{"message":"model not found","type":"NotFoundError","code":404}}'
                self._send(404, msg)
                return
            if request.get("stream"):
                self._stream(model)
            else:
                self._send(200, completion_body(model))
        elif path == b"/health":
            self._send(200, b"")
        elif path == b"/v1/models":
            data = [{"id": cfg.base_model, "object": "model", "root": cfg.base_model}]
            data += [{"id": n, "object": "model", "parent": cfg.base_model} for n in cfg.loras]
            self._send(200, orjson.dumps({"object": "list", "data": data}))
        elif path in (b"/v1/load_lora_adapter", b"/v1/unload_lora_adapter") and method == b"POST":
            name = str(orjson.loads(body).get("lora_name", ""))
            if path == b"/v1/load_lora_adapter":
                cfg.loras.add(name)
                self._send(200, b"Success: LoRA adapter loaded", b"text/plain")
            elif name in cfg.loras:
                cfg.loras.discard(name)
                self._send(200, b"Success: LoRA adapter unloaded", b"text/plain")
            else:
                self._send(404, b'{"error":{"message":"unknown","type":"NotFoundError"}}')
        else:
            self._send(404, b'{"detail":"Not Found"}')

    def _stream(self, model: str) -> None:
        assert self.transport is not None
        self.busy = True
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + _chunk(sse_frame(model, 0))
        )
        loop = asyncio.get_running_loop()
        interval = self.config.interval_ms / 1000.0
        total = self.config.chunks

        def tick(index: int) -> None:
            if self.transport is None:
                return
            if index < total:
                self.transport.write(_chunk(sse_frame(model, index)))
                loop.call_later(interval, tick, index + 1)
                return
            self.transport.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            self.busy = False
            self._drain()

        loop.call_later(interval, tick, 1)


async def serve(config: MockConfig, host: str, ports: list[int]) -> None:
    """Several ports, one process: the gateway sees several replicas sharing one LoRA table."""
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: MockProtocol(config), host, port, backlog=4096)
        for port in ports
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--base-model", default="bench-base")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    args = parser.parse_args()
    config = MockConfig(args.base_model, args.chunks, args.interval_ms)
    run_fast(serve(config, args.host, args.port))


def run_fast(coro: Coroutine[Any, Any, None]) -> None:
    """uvloop when present (it halves per-request CPU), plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
