"""Raw ASGI for the hot route: header lookup, bounded body reads, responses, disconnect watching.

`/v1/chat/completions` is served without Starlette's request/response objects or middleware: the
profile of the full feature path showed the middleware stack and per-request task bookkeeping
costing more than the gateway's own work (loadtests/README.md).

    authorization, length = request_headers(scope)
    body = await read_body(receive, limit, length)
    watch = Disconnect(receive)                       # cancels this task if the client leaves
    ...
    watch.stop()                                      # before the last message is sent
    await send_body(send, 200, payload, call_headers)
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import ApiError

JSON = b"application/json"
SSE = b"text/event-stream"


def request_headers(scope: Scope) -> tuple[str | None, str | None]:
    """(authorization, content-length): the only request headers the route reads (ASGI servers
    give lower-case names; latin-1 as HTTP says). The last of repeated headers wins."""
    authorization = length = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-length":
            length = value.decode("latin-1")
    return authorization, length


def raw_headers(headers: dict[str, str], content_type: bytes) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", content_type)]
    out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    return out


async def read_body(receive: Receive, limit: int, declared: str | None) -> bytes:
    """Read at most `limit` bytes, counting what actually arrives (Content-Length may lie)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError("payload_too_large", f"The request body exceeds {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise ApiError("payload_too_large", f"The request body exceeds {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def send_body(
    send: Send, status: int, body: bytes, headers: dict[str, str], content_type: bytes = JSON
) -> None:
    raw = raw_headers(headers, content_type)
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def error_response(error: ApiError, extra_headers: dict[str, str] | None = None) -> Response:
    """The error as a Starlette response (routes and exception handlers behind FastAPI)."""
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        media_type="application/json",
        headers=error.response_headers(extra_headers),
    )


async def send_error(send: Send, error: ApiError, headers: dict[str, str]) -> None:
    await send_body(send, error.status, orjson.dumps(error.body()), error.response_headers(headers))


class Disconnect:
    """Watches the client for the rest of the request and cancels the handling task when it
    leaves, so an engine request is aborted at whatever await it is in (queue, prefill, relay).

    One task per request (not a second task for the work plus `asyncio.wait`). `stop()` must run
    before the response's last message: after it, ASGI servers answer `receive()` with
    `http.disconnect` at once. The handler treats a CancelledError with `gone` set as a client
    disconnect and calls `asyncio.current_task().uncancel()`."""

    __slots__ = ("_task", "_watch", "gone")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.gone = False
        self._watch: asyncio.Task[None] = asyncio.ensure_future(self._wait(receive))

    async def _wait(self, receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                break
        self.gone = True
        self._task.cancel()

    def stop(self) -> None:
        self._watch.cancel()
