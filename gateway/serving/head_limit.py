"""uvicorn's httptools protocol with a bound on the request head.

httptools has none: a client could send megabytes of header lines and uvicorn would hold them all
in memory and serve the request. Here, while a request's head is incomplete, the bytes fed to the
parser are counted; past `MAX_HEAD_BYTES` the client gets 431 `headers_too_large` (the error
table's format) and the connection is closed. The count is checked after each read, so at most
one read (uvloop reads up to 256 KiB) goes past the bound. The close lingers: the write side is
shut at once, what the client still sends is read and dropped for up to `LINGER_S`, because a
socket closed with unread bytes is reset and the client would lose the answer. granian bounds
the head by itself (its read buffer, ~408 KiB).

    uvicorn.run(app, http=BoundedHeadProtocol)
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import ApiError

# Room for a 64 KiB credential (tests/security/test_security_server.py) and ordinary headers.
MAX_HEAD_BYTES = 128 * 1024
LINGER_S = 2.0


def _refusal() -> bytes:
    error = ApiError("headers_too_large", "Request header fields too large.")
    body = orjson.dumps(error.body())
    head = (
        f"HTTP/1.1 {error.status} Request Header Fields Too Large\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedHeadProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = False
        self._head_bytes = 0
        self._refused = False

    def on_message_begin(self) -> None:
        self._head_open, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # dropped: the answer is out, the connection is closing
        super().data_received(data)
        if self._head_open:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse()

    def _refuse(self) -> None:
        self._refused = True
        transport = self.transport
        transport.write(_refusal())
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)
