"""S6 at the socket, on each HTTP server the gateway can run on (uvicorn, granian): body limits
with honest, absent and lying lengths, a large credential header that must reach the gateway, a
header block no server should take, and a client that sends its body slowly while others are
served. The in-process S6 tests (test_security_limits.py) go through no server at all; these go
through the real one, as clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
import pytest

from tests.fixtures.gateway import SeededTenant
from tests.fixtures.inprocess import InProcessFactory
from tests.fixtures.servers import served

MB = 1024 * 1024
BODY = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})


def _head(key: str, extra: str = "") -> str:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n{extra}"
    )


async def _exchange(port: int, raw: bytes, *, trickle_s: float = 0.0) -> tuple[int, bytes]:
    """Send `raw` (in 64-byte pieces `trickle_s` apart when set), read one response; status 0:
    the server closed the connection without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if trickle_s:
            for i in range(0, len(raw), 64):
                writer.write(raw[i : i + 64])
                await writer.drain()
                await asyncio.sleep(trickle_s)
        else:
            writer.write(raw)
            with contextlib.suppress(ConnectionError):  # refused while sending: the answer counts
                await writer.drain()
        async with asyncio.timeout(30):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return 0, b""
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        async with asyncio.timeout(30):
            body = await reader.readexactly(length) if length else b""
        return status, body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _code(body: bytes) -> str:
    return str(orjson.loads(body)["error"]["code"])


def _json_request(tenant: SeededTenant, body: bytes, extra: str = "") -> bytes:
    return (_head(tenant.api_key, extra) + f"content-length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
@pytest.mark.timeout(120)
async def test_s6_limits_hold_through_the_real_server(
    server: str, inprocess_gateway: InProcessFactory
) -> None:
    gw = await inprocess_gateway(max_body_bytes=MB)
    tenant = await gw.seed_tenant("s6srv", adapter=None)
    async with served(gw.app, server) as port:
        status, body = await _exchange(port, _json_request(tenant, BODY))
        assert status == 200, body
        assert len(gw.engine.requests) == 1

        # Body over the limit: honest length (refused before reading), chunked, lying length.
        big = b"a" * (2 * MB)
        status, body = await _exchange(port, _json_request(tenant, big))
        assert (status, _code(body)) == (413, "payload_too_large")
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [big[:MB], big[MB:]])
        raw = (_head(tenant.api_key, "transfer-encoding: chunked\r\n") + "\r\n").encode()
        status, body = await _exchange(port, raw + chunked + b"0\r\n\r\n")
        assert (status, _code(body)) == (413, "payload_too_large")
        # A length that says less than is sent: the server reads what it said, no more.
        lying = (_head(tenant.api_key) + "content-length: 100\r\n\r\n").encode() + big
        status, body = await _exchange(port, lying)
        assert status in (0, 400), (status, body)

        # A 64 KiB credential reaches the gateway (and is refused there, without a lookup).
        status, body = await _exchange(port, _json_request(tenant, BODY).replace(
            tenant.api_key.encode(), b"k" * 64 * 1024))  # fmt: skip
        assert (status, _code(body)) == (401, "invalid_api_key")
        assert len(gw.engine.requests) == 1

        # A client trickling its body (64 bytes every 50 ms) holds up no one else.
        slow_body = orjson.dumps({"model": "chat", "messages": [
            {"role": "user", "content": "s" * 2000}]})  # fmt: skip
        slow = asyncio.create_task(
            _exchange(port, _json_request(tenant, slow_body), trickle_s=0.05)
        )
        await asyncio.sleep(0.3)
        started = time.monotonic()
        for _ in range(5):
            status, body = await _exchange(port, _json_request(tenant, BODY))
            assert status == 200, body
        assert time.monotonic() - started < 10.0
        assert not slow.done()
        status, body = await slow
        assert status == 200, body
        assert len(gw.engine.requests) == 7


@pytest.mark.parametrize(
    "server",
    [
        "uvicorn",  # gateway/serving/head_limit.py: 431 past 128 KiB
        "granian",  # max_buffer_size (~408 KiB) bounds the header block
    ],
)  # fmt: skip
@pytest.mark.timeout(60)
async def test_s6_a_4mib_header_block_is_not_served(
    server: str, inprocess_gateway: InProcessFactory
) -> None:
    gw = await inprocess_gateway()
    tenant = await gw.seed_tenant("s6hdr", adapter=None)
    huge = "".join(f"x-pad-{i}: {'p' * 4000}\r\n" for i in range(1024))
    async with served(gw.app, server) as port:
        status, body = await _exchange(port, _json_request(tenant, BODY, huge))
        assert gw.engine.requests == []
        assert status in (0, 400, 413, 431), (status, body[:200])
        if server == "uvicorn":  # ours says why, in the error table's format
            assert (status, _code(body)) == (431, "headers_too_large")
