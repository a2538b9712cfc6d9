"""The lean upstream client (`LORAGATE_UPSTREAM_CLIENT=lean`, gateway/engines/lean.py) against
the scripted engine: answers whole and streamed, keep-alive reuse, and every way a call fails
(refused, 4xx/5xx, dropped mid-stream, silent past the read timeout, aborted by the gateway)
classified as the aiohttp path classifies it. The gateway-level reliability and security suites
run on it too (`LORAGATE_UPSTREAM_CLIENT=lean make test`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from adapters.ports import free_port
from gateway.engines.lean import LeanBroken, LeanClient
from gateway.engines.upstream import EngineResponse, UpstreamError, UpstreamFailed, open_chat
from tests.fixtures.fake_engine import FakeEngine, FakeEngineFactory, Step

pytestmark = pytest.mark.timeout(60)
CHAT = "/v1/chat/completions"


@pytest.fixture
async def client() -> AsyncIterator[LeanClient]:
    lean = LeanClient({"Authorization": "Bearer engine-key"})
    yield lean
    lean.close()


def _body(fake: FakeEngine, *, stream: bool = False) -> dict[str, object]:
    return {"model": fake.served_name, "messages": [{"role": "user", "content": "hi"}],
            "stream": stream}  # fmt: skip


async def _open(
    client: LeanClient, fake: FakeEngine, *, stream: bool = False, read: float = 5.0
) -> EngineResponse:
    return await open_chat(
        client, fake.url, _body(fake, stream=stream), connect_timeout=2.0, read_timeout=read,
        headers={"X-Request-Id": "req-1"},
    )  # fmt: skip


async def test_a_whole_answer_is_read_and_its_connection_kept(
    client: LeanClient, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    for _ in range(3):
        response = await _open(client, fake)
        assert response.status == 200
        answer = orjson.loads(await response.read())
        assert answer["choices"][0]["message"]["content"]
        response.release()
        assert client.idle() == 1  # one connection, kept and reused
    assert len(fake.requests) == 3
    assert fake.headers[0]["authorization"] == "Bearer engine-key"
    assert fake.headers[0]["x-request-id"] == "req-1"


async def test_a_stream_arrives_in_pieces_and_ends_with_done(
    client: LeanClient, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    fake.default = Step("ok", tokens=8, gap_s=0.01)
    response = await _open(client, fake, stream=True)
    pieces = [piece async for piece in response.content.iter_any()]
    response.release()
    assert len(pieces) > 1  # relayed as they came, not buffered to the end
    events = b"".join(pieces).split(b"\n\n")
    assert b"data: [DONE]" in events
    assert client.idle() == 1


async def test_engine_errors_are_classified_like_aiohttps(
    client: LeanClient, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    fake.script(Step("status", status=500), Step("status", status=400))
    with pytest.raises(UpstreamFailed):
        await _open(client, fake)  # 5xx: retryable elsewhere
    with pytest.raises(UpstreamError) as info:
        await _open(client, fake)  # 4xx: the request's own fault
    assert info.value.status == 400
    assert info.value.message == "scripted failure"


async def test_an_unreachable_engine_is_retryable(client: LeanClient) -> None:
    with pytest.raises(UpstreamFailed):
        await open_chat(
            client, f"http://127.0.0.1:{free_port()}", {}, connect_timeout=1.0, read_timeout=1.0
        )


async def test_a_stream_dropped_mid_way_breaks_the_read(
    client: LeanClient, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    fake.default = Step("drop_after", tokens=3)
    response = await _open(client, fake, stream=True)
    with pytest.raises(LeanBroken):
        async for _ in response.content.iter_any():
            pass
    response.release()
    assert client.idle() == 0  # a broken connection is never reused


async def test_a_silent_engine_times_out_between_reads(
    client: LeanClient, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    fake.default = Step("ok", tokens=2, delay_s=3.0)
    response = await _open(client, fake, stream=True, read=0.3)  # headers come first
    with pytest.raises(TimeoutError):
        async for _ in response.content.iter_any():
            pass
    response.close()
    await asyncio.to_thread(fake.wait_until, lambda e: e.disconnects == 1)


async def test_close_aborts_the_engine_request(
    client: LeanClient, fake_engine: FakeEngineFactory
) -> None:
    fake = fake_engine()
    fake.default = Step("ok", tokens=200, gap_s=0.02)
    response = await _open(client, fake, stream=True)
    async for _ in response.content.iter_any():
        break  # the first piece, then the tenant is gone
    response.close()
    await asyncio.to_thread(fake.wait_until, lambda e: e.disconnects == 1)
    assert client.idle() == 0
