"""A client that disconnects makes the gateway abort the real vLLM request, at each of three
points: before the first token (stream), mid-stream, and during a non-streaming request.

Proof at the engine side (vLLM logs aborts only with --enable-log-requests, and aborted requests
are not counted as finished): `vllm:num_requests_running` falls back to 0 within seconds although
the request (max_tokens 1500, greedy) would decode for much longer, while
`vllm:request_success_total` (requests that finished by stop or length) does not move, and
`vllm:generation_tokens_total` stops growing far short of max_tokens.
Proof at the gateway: `loragate_engine_in_flight` returns to 0.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from adapters.engine_process import EngineProcess
from tests.fixtures.faultproxy import FaultProxy, FaultProxyFactory
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, SeededTenant
from tests.fixtures.models import TinyModels
from tests.fixtures.traffic import (
    chat_body,
    metric,
    metric_sum,
    open_raw_chat,
    read_until,
    wait_for,
)

pytestmark = pytest.mark.engine

LONG = 1500
ABORT_WITHIN_S = 5.0  # generous: CI boxes are oversubscribed
BUSY_WITHIN_S = 30.0


def _running(engine: EngineProcess) -> float:
    return metric(engine.url, "vllm:num_requests_running") or 0.0


def _finished(engine: EngineProcess) -> float:
    return metric_sum(engine.url, "vllm:request_success_total")


def _generated(engine: EngineProcess) -> float:
    return metric_sum(engine.url, "vllm:generation_tokens_total")


@pytest.fixture
def cancel_stack(
    gateway_factory: GatewayFactory,
    engine: EngineProcess,
    tiny_models: TinyModels,
    fault_proxy: FaultProxyFactory,
) -> Iterator[tuple[GatewayProcess, SeededTenant, FaultProxy]]:
    proxy = fault_proxy(engine.port)
    gw = gateway_factory(engines=[proxy.url])
    tenant = gw.seed_tenant("leaver", adapter=tiny_models.adapter_relpaths[0])
    gw.wait_ready()
    wait_for(lambda: _running(engine) == 0, 30, "engine idle before the test")
    yield gw, tenant, proxy
    proxy.clear()


def _wait_engine_busy(
    engine: EngineProcess, gw: GatewayProcess, sock: socket.socket, generated: float
) -> None:
    """The engine works on the request: it runs, or it decoded tokens since (a scrape can fall
    between steps). Otherwise fail with what the gateway answered and its log, not a bare timeout."""
    try:
        wait_for(
            lambda: _running(engine) >= 1 or _generated(engine) > generated,
            BUSY_WITHIN_S,
            "engine running the request",
        )
    except TimeoutError as exc:
        sock.setblocking(False)
        try:
            answer = sock.recv(4096)
        except BlockingIOError:
            answer = b"(no answer yet)"
        log = gw.log_path.read_text(errors="replace")[-2000:]
        raise AssertionError(f"{exc}; gateway answered {answer[:600]!r}; log: {log}") from exc


def _assert_aborted(engine: EngineProcess, gw: GatewayProcess, before: tuple[float, float]) -> None:
    finished, generated = before
    took = wait_for(lambda: _running(engine) == 0, ABORT_WITHIN_S, "engine request aborted")
    assert _finished(engine) == finished  # it did not end by itself: it was aborted
    tokens = _generated(engine)
    assert tokens - generated < LONG
    wait_for(
        lambda: metric(gw.url, "loragate_engine_in_flight", engine="engine-0") == 0,
        ABORT_WITHIN_S,
        "gateway in-flight gauge back to 0",
    )
    assert _generated(engine) == tokens  # and nothing decodes any more
    print(f"engine idle {took:.2f}s after the disconnect; {tokens - generated:.0f} tokens decoded")


def test_disconnect_before_first_token_aborts_the_engine_request(
    cancel_stack: tuple[GatewayProcess, SeededTenant, FaultProxy], engine: EngineProcess
) -> None:
    gw, tenant, proxy = cancel_stack
    proxy.set(freeze="down")  # the engine generates; not a byte of it reaches the gateway
    before = (_finished(engine), _generated(engine))
    sock = open_raw_chat(gw.url, tenant.api_key, chat_body("chat", stream=True, max_tokens=LONG))
    with contextlib.closing(sock):
        _wait_engine_busy(engine, gw, sock, before[1])
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # nothing has reached the client
    _assert_aborted(engine, gw, before)


def test_disconnect_mid_stream_aborts_the_engine_request(
    cancel_stack: tuple[GatewayProcess, SeededTenant, FaultProxy], engine: EngineProcess
) -> None:
    gw, tenant, _ = cancel_stack
    before = (_finished(engine), _generated(engine))
    sock = open_raw_chat(gw.url, tenant.api_key, chat_body("chat", stream=True, max_tokens=LONG))
    with contextlib.closing(sock):
        head = read_until(sock, b"data: ", count=4)
        assert head.startswith(b"HTTP/1.1 200")
        assert _running(engine) >= 1
    _assert_aborted(engine, gw, before)


def test_disconnect_during_non_streaming_request_aborts_the_engine_request(
    cancel_stack: tuple[GatewayProcess, SeededTenant, FaultProxy], engine: EngineProcess
) -> None:
    gw, tenant, _ = cancel_stack
    before = (_finished(engine), _generated(engine))
    sock = open_raw_chat(gw.url, tenant.api_key, chat_body("chat", max_tokens=LONG))
    with contextlib.closing(sock):
        _wait_engine_busy(engine, gw, sock, before[1])
    _assert_aborted(engine, gw, before)
