"""SSE keep-alive: comment lines while a stream waits for its first token.

A queued request, an adapter load or a long prefill can keep a stream silent for longer than a
load balancer's idle timeout. After `interval` seconds without a first event the response is
started (200, text/event-stream) and `: keep-alive` comments follow every `interval` seconds until
the first event; SSE clients (the OpenAI SDK included) ignore comments. Nothing is scheduled but a
timer handle until the interval passes, so a fast stream pays for one `call_later`.

    call.keepalive = KeepAlive.start(send, call, interval)   # before leasing a replica
    ...
    await call.keepalive.stop()                              # before the first event is sent

Once it has started the response, errors that would have been a status code (no replica, the
engine refused the request) end the stream with one error event instead.
"""

from __future__ import annotations

import asyncio

from starlette.types import Send

from gateway.serving.asgi import SSE, raw_headers
from gateway.serving.call import Call

COMMENT = b": keep-alive\n\n"


class KeepAlive:
    __slots__ = ("_call", "_handle", "_interval", "_send", "_task")

    def __init__(self, send: Send, call: Call, interval: float) -> None:
        self._send = send
        self._call = call
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._handle = asyncio.get_running_loop().call_later(interval, self._fire)

    @classmethod
    def start(cls, send: Send, call: Call, interval: float) -> KeepAlive | None:
        return cls(send, call, interval) if interval > 0 else None

    def _fire(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        call = self._call
        if not call.responded:
            call.responded = True  # before the await: the request task sees it at once
            headers = raw_headers(call.headers, SSE)
            await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        while True:
            await self._send({"type": "http.response.body", "body": COMMENT, "more_body": True})
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        self._handle.cancel()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the request itself is being cancelled
        elif task is not None and not task.cancelled():
            task.exception()  # a failed write (client gone) shows on the relay's next write

    def cancel(self) -> None:
        """Synchronous, for cleanup paths: nothing more is written."""
        self._handle.cancel()
        if self._task is not None:
            self._task.cancel()
