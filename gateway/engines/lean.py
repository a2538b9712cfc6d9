"""A lean keep-alive HTTP/1.1 client for the one hot call: POST a chat request to an engine.

`LORAGATE_UPSTREAM_CLIENT=lean` (aiohttp stays the default). In the floor benchmark
(loadtests/floor.py) a minimal uvicorn proxy spends 54 us of CPU per request with this client and
118 us with aiohttp's: one transport write per request, httptools parsing the answer inside
`data_received`, one future per wait. What the gateway needs of a client and nothing more:

- keep-alive pools per engine (at most `max_idle` idle connections kept; none is reused unless
  its answer was read to the end and the engine did not ask to close);
- a connect timeout, and a read timeout between two pieces of the answer;
- back-pressure: past `HIGH_WATER` unread bytes the socket stops being read until the relay
  catches up (a slow tenant never makes the gateway buffer an engine's whole answer);
- `close()` aborts the connection, so vLLM aborts the request (a cancelled relay calls it).

The response object offers what the relay uses of aiohttp's: `status`, `read()`,
`content.iter_any()`, `release()`, `close()`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024
# vLLM's server closes a connection idle for 5 s; one idle longer than this is not reused (a
# request written as the engine closes it would fail for no fault of its own).
IDLE_S = 4.0


class LeanBroken(Exception):
    """The engine connection failed or closed before the answer ended."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.head_done = False
        self.done = False
        self.keep_alive = True
        self.lost: BaseException | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0

    # -- protocol callbacks (the event loop's) --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.lost = LeanBroken(f"bad answer: {type(exc).__name__}")
            if self.transport is not None:
                self.transport.abort()
        if not self.paused and self.buffered > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done and self.lost is None:
            self.lost = LeanBroken("the engine closed the connection")
        self.keep_alive = False
        self._wake()

    def eof_received(self) -> bool | None:
        self.keep_alive = False
        return None

    # -- parser callbacks -----------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.done = True

    # -- the caller's side ----------------------------------------------------------------------
    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until something more arrived (or the connection ended); TimeoutError after `timeout`."""
        if self.lost is not None:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout):
            await self.waiter

    def take(self) -> bytes:
        out = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        return out


class LeanResponse:
    __slots__ = ("_client", "_conn", "_key", "_read_timeout", "_settled", "_status")

    def __init__(self, client: LeanClient, key: tuple[str, int], conn: _Conn, read: float) -> None:
        self._client = client
        self._key = key
        self._conn = conn
        self._read_timeout = read
        self._settled = False
        self._status = 0  # set once the head arrived; kept after the connection is reused

    @property
    def status(self) -> int:
        return self._status

    @property
    def content(self) -> LeanResponse:
        return self

    async def iter_any(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if conn.done:
                return
            await conn.wait(self._read_timeout)

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.iter_any()]
        return b"".join(parts)

    def release(self) -> None:
        """After the whole answer: the connection goes back to the pool (if it may)."""
        if self._settled:
            return
        self._settled = True
        conn = self._conn
        if conn.done and not conn.chunks and conn.keep_alive and conn.lost is None:
            self._client.give_back(self._key, conn)
        elif conn.transport is not None:
            conn.transport.abort()

    def close(self) -> None:
        """Abort: drop the connection (vLLM aborts a request whose client is gone)."""
        self._settled = True
        if self._conn.transport is not None:
            self._conn.transport.abort()


class LeanClient:
    """Keep-alive connections per engine, `post` one request at a time on each."""

    def __init__(self, headers: dict[str, str] | None = None, max_idle: int = 64) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._default = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str] | None,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> LeanResponse:
        """Send the request and wait for the answer's status line and headers. Raises OSError,
        TimeoutError or LeanBroken when it could not be sent or answered (retryable)."""
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        head = [f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"{self._default}"]  # fmt: skip
        if headers:
            for name, value in headers.items():
                if "\r" in value or "\n" in value:  # no header smuggled into the engine request
                    raise ValueError(f"header {name} holds a line break")
                head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        conn = await self._connection(key, connect_timeout)
        assert conn.transport is not None
        conn.transport.write("".join(head).encode("latin-1") + body)
        response = LeanResponse(self, key, conn, read_timeout)
        try:
            while not conn.head_done:
                await conn.wait(read_timeout)
        except BaseException:
            response.close()
            raise
        response._status = conn.status
        return response

    async def _connection(self, key: tuple[str, int], timeout: float) -> _Conn:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            fresh = loop.time() - conn.idle_since < IDLE_S
            if conn.transport is not None and not conn.transport.is_closing() and conn.keep_alive:
                if fresh:
                    return conn
                conn.transport.close()
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(_Conn, key[0], key[1])
        return conn

    def give_back(self, key: tuple[str, int], conn: _Conn) -> None:
        conn.parser = httptools.HttpResponseParser(conn)
        conn.status, conn.head_done, conn.done = 0, False, False
        conn.idle_since = asyncio.get_running_loop().time()
        idle = self._idle.setdefault(key, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def idle(self) -> int:
        """Connections kept for reuse, all engines together."""
        return sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
