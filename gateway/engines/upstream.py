"""Talking to one engine replica: open a chat request, classify what came back. The client is
aiohttp's session or, with `LORAGATE_UPSTREAM_CLIENT=lean`, gateway/engines/lean.py.

A request is *retryable* on another replica only while nothing has reached the client: the
connection failed, or the engine answered 5xx before the first byte of the body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp.payload import BytesPayload

from gateway.engines.lean import LeanBroken, LeanClient
from gateway.engines.pool import EnginePool

_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Upstream:
    """What an engine call needs and nothing more: the pool it leases a replica from, the HTTP
    session, and the timeouts (connect; between two reads of the answer)."""

    pool: EnginePool
    session: aiohttp.ClientSession
    connect_timeout: float
    read_timeout: float
    lean: LeanClient | None = None  # LORAGATE_UPSTREAM_CLIENT=lean: chat calls go through it

    @property
    def chat_client(self) -> aiohttp.ClientSession | LeanClient:
        return self.lean if self.lean is not None else self.session


class _Body(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class EngineResponse(Protocol):
    """What the relay uses of an engine's answer (aiohttp's response, or the lean client's)."""

    @property
    def status(self) -> int: ...

    @property
    def content(self) -> _Body: ...

    async def read(self) -> bytes: ...

    def release(self) -> Any: ...

    def close(self) -> None: ...


# Mid-answer failures of either client: the relay turns them into an engine_error.
BROKEN: tuple[type[BaseException], ...] = (aiohttp.ClientError, LeanBroken, TimeoutError)
# Before the answer starts nothing is written to the client, so any OSError is the engine
# connection's; BROKEN, used mid-stream where both sides are written to, leaves OSError out.
_UNREACHABLE: tuple[type[BaseException], ...] = (*BROKEN, OSError)


class UpstreamFailed(Exception):
    """The engine could not be reached or answered 5xx; safe to retry elsewhere."""


@dataclass  # not frozen: raising sets __traceback__ on the instance
class UpstreamError(Exception):
    """The engine answered 4xx: the request itself is at fault (or the adapter vanished: 404)."""

    status: int
    message: str


async def open_chat(
    client: aiohttp.ClientSession | LeanClient,
    url: str,
    body: dict[str, Any],
    *,
    connect_timeout: float,
    read_timeout: float,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> EngineResponse:
    """POST to `path` (chat or text completions) and return the response once its status is 200.
    `headers` carry the request id and trace context (`X-Request-Id`, `traceparent`).

    The caller owns the response: `release()` after a clean end, `close()` to abort the engine
    request (vLLM aborts generation when its client connection drops).
    """
    response: EngineResponse
    try:
        if isinstance(client, LeanClient):
            response = await client.post(
                url + path, orjson.dumps(body), headers,
                connect_timeout=connect_timeout, read_timeout=read_timeout,
            )  # fmt: skip
        else:
            response = await client.post(
                url + path,
                data=BytesPayload(orjson.dumps(body), content_type=_JSON),
                headers=headers,
                timeout=_timeout(connect_timeout, read_timeout),
            )
    except _UNREACHABLE as exc:
        raise UpstreamFailed(type(exc).__name__) from None
    if response.status == 200:
        return response
    try:
        raw = await response.read()
    except _UNREACHABLE:
        raw = b""
    finally:
        response.release()
    if response.status >= 500:
        raise UpstreamFailed(f"status {response.status}")
    raise UpstreamError(response.status, _message_of(raw))


@lru_cache(maxsize=16)
def _timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)


def _message_of(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "The engine rejected the request."
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(data.get("message"), str):
            return str(data["message"])
        if isinstance(data.get("detail"), str):
            return str(data["detail"])
    return "The engine rejected the request."
