"""Engine side of a chat request: lease a replica, open the request, relay the answer.

    lease, response = await open_engine(state.upstream, call, engine_body)  # retries before a byte
    raw = await read_answer(state.upstream.pool, lease, response)           # a whole answer
    await complete(Exchange(state, send, call, chat, engine_body, guard, watch))  # or stream(...)

`open_engine` and `read_answer` are the one way a release's request reaches an engine: the tenant
path and the evaluation gate (gateway/rollout/evaluation.py) both go through them, so a release is
evaluated with the retries and the scrubbed errors its tenants get.

Both relays run in the request's own task: a client that disconnects cancels it (see
`gateway.serving.asgi.Disconnect`), which closes the engine connection, and vLLM aborts the request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Send

from adapters.errors import (
    ArtifactError,
    EngineLoadFailed,
    EngineUnavailable,
    NoReplicaAvailable,
)
from gateway.engines.pool import SYSTEM_FLOW, EnginePool
from gateway.engines.replica import Lease
from gateway.engines.upstream import (
    BROKEN,
    EngineResponse,
    Upstream,
    UpstreamError,
    UpstreamFailed,
    open_chat,
)
from gateway.errors import ApiError
from gateway.observability.metrics import GatewayMetrics
from gateway.serving.asgi import SSE, Disconnect, raw_headers, send_body, send_error
from gateway.serving.call import Call, engine_headers, finish, record_guard
from gateway.serving.keepalive import KeepAlive
from gateway.serving.output_checks import OutputGuard
from gateway.serving.render import ChatRequest
from gateway.serving.sse import (
    DONE,
    DONE_EVENT,
    EventReader,
    ModelRewrite,
    SseProtocolError,
    error_event,
)
from gateway.serving.tools import has_tool_calls
from gateway.state import AppState

log = logging.getLogger("loragate.chat")
MAX_ATTEMPTS = 2
_MID_STREAM: tuple[type[BaseException], ...] = (*BROKEN, SseProtocolError, orjson.JSONDecodeError)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One tenant request between the gateway and an engine: what `complete` and `stream` need."""

    state: AppState
    send: Send
    call: Call
    chat: ChatRequest
    engine_body: dict[str, Any]
    guard: OutputGuard
    watch: Disconnect


async def open_engine(
    upstream: Upstream, call: Call, engine_body: dict[str, Any]
) -> tuple[Lease, EngineResponse]:
    """Lease a replica and open the engine request, retrying elsewhere before any byte is sent."""
    pool = upstream.pool
    exclude: frozenset[str] = frozenset()
    flow = call.flow if call.flow is not None else SYSTEM_FLOW
    for attempt in range(MAX_ATTEMPTS):
        try:
            lease = await pool.acquire(call.adapter, exclude=exclude, flow=flow)
        except NoReplicaAvailable:
            raise  # nowhere left to retry
        except (EngineUnavailable, EngineLoadFailed):
            if attempt + 1 >= MAX_ATTEMPTS:
                raise
            continue
        except ArtifactError as exc:
            log.error("adapter artifact failed its digest check: %s", exc.code)
            raise ApiError("adapter_load_failed", "The adapter could not be loaded.") from None
        engine_body["model"] = lease.engine_model
        call.overhead += time.perf_counter() - call.started
        if call.trace is not None:
            call.trace.mark("adapter.load" if lease.miss else "engine.queue",
                            {"loragate.replica": lease.replica.name})  # fmt: skip
        try:
            response = await open_chat(
                upstream.chat_client,
                lease.replica.url,
                engine_body,
                connect_timeout=upstream.connect_timeout,
                read_timeout=upstream.read_timeout,
                path=call.engine_path,
                headers=engine_headers(call),
            )
        except UpstreamFailed:
            pool.release(lease)
            pool.report_failure(lease.replica)
            exclude = exclude | {lease.replica.name}
            call.started = time.perf_counter() - call.overhead
            continue
        except UpstreamError as exc:
            pool.release(lease)
            if exc.status == 404 and lease.engine_name is not None and attempt + 1 < MAX_ATTEMPTS:
                pool.forget(lease.replica, lease.engine_name)  # engine restarted: load again
                continue
            raise ApiError(
                "invalid_request", _scrub(exc.message, lease.engine_model, call)
            ) from None
        except BaseException:
            pool.release(lease)
            raise
        pool.report_success(lease.replica)
        call.headers["x-loragate-engine"] = lease.replica.name
        if call.trace is not None:
            call.trace.mark("engine.call")
        return lease, response
    raise ApiError(
        "engine_unavailable", "No engine replica could serve the request; retry shortly."
    )


def _scrub(message: str, engine_model: str, call: Call) -> str:
    """Engine messages may name the engine adapter; tenants only ever see their alias."""
    return message.replace(engine_model, call.alias)[:500]


async def read_answer(pool: EnginePool, lease: Lease, response: EngineResponse) -> bytes:
    """The whole (non-streamed) answer; the lease is returned whatever happens."""
    try:
        raw = await response.read()
        response.release()
    except BaseException as exc:
        response.close()  # drops the connection: vLLM aborts the request
        if isinstance(exc, BROKEN):
            raise ApiError("engine_unavailable", "The engine failed during the request.") from None
        raise
    finally:
        pool.release(lease)
    return raw


async def complete(x: Exchange) -> None:
    state, send, call, chat, guard, watch = x.state, x.send, x.call, x.chat, x.guard, x.watch
    lease, response = await open_engine(state.upstream, call, x.engine_body)
    raw = await read_answer(state.upstream.pool, lease, response)
    t_post = time.perf_counter()
    data = orjson.loads(raw)
    data["model"] = chat.alias
    usage = data.get("usage") or {}
    call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    call.completion_tokens = int(usage.get("completion_tokens") or 0)
    if guard.active:
        choices = data.get("choices") or []
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        text = str((first.get("message") or {}).get("content") or first.get("text") or "")
        # A tool call has no content to judge: schema and refusal checks apply to content only.
        verdict = guard.check_none() if has_tool_calls(first) and not text else guard.check(text)
        record_guard(state.metrics, call, verdict)
        if verdict.schema_violation and guard.reject:
            watch.stop()
            finish(state, call, "schema_violation")
            error = ApiError(
                "schema_violation", "The model output did not match the release's schema."
            )
            await send_error(send, error, call.headers)
            return
    payload = orjson.dumps(data)
    call.overhead += time.perf_counter() - t_post
    watch.stop()
    finish(state, call, "ok")
    await send_body(send, 200, payload, call.headers)


async def stream(x: Exchange) -> None:
    # The watcher is already running: a client that leaves while the engine queues or prefills
    # cancels this task, and the engine request with it.
    state, send, call = x.state, x.send, x.call
    call.keepalive = KeepAlive.start(send, call, state.settings.sse_keepalive_s)
    lease, response = await open_engine(state.upstream, call, x.engine_body)
    clean = False
    try:
        if not call.responded:  # the keep-alive may have started the response already
            call.responded = True
            headers = raw_headers(call.headers, SSE)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        rewrite = None if x.guard.active else ModelRewrite(lease.engine_model, x.chat.alias)
        status, tail = await _relay(state.metrics, send, call, x.chat, response, x.guard, rewrite)
        if call.keepalive is not None:  # a stream that ended before its first event
            await call.keepalive.stop()
        clean = status == "ok"
        x.watch.stop()
        finish(state, call, status)
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    finally:
        if clean:
            response.release()
        else:
            response.close()  # abort at the engine
        state.pool.release(lease)


async def _relay(
    metrics: GatewayMetrics,
    send: Send,
    call: Call,
    chat: ChatRequest,
    response: EngineResponse,
    guard: OutputGuard,
    rewrite: ModelRewrite | None,
) -> tuple[str, bytes]:
    """Relay engine events until [DONE]; returns the outcome and the stream's last bytes.
    Events that arrive in one engine read leave in one write.

    With a `rewrite` (no output check reads the content), whole events pass as bytes with only
    the `model` replaced; what must be read (the usage chunk that meters the request, an error,
    [DONE], anything in another layout) is parsed. Without one, every event is parsed."""
    reader = EventReader(rewrite)
    saw_done = False
    first_at: float | None = None
    last_at = 0.0
    text: list[str] = []
    gaps: list[float] = []
    alias = chat.alias
    include_usage = chat.include_usage
    collect = guard.active
    tool_calls = False
    try:
        async for chunk in response.content.iter_any():
            out: list[bytes] = []
            t = time.perf_counter()
            ready, payloads = reader.feed(chunk)
            if ready:
                out.append(ready)
            for payload in payloads:
                if payload == DONE:
                    saw_done = True
                    continue
                if reader.rewrite is not None:
                    rewritten = reader.rewrite.event(payload)
                    if rewritten is not None:
                        out.append(b"data: " + rewritten + b"\n\n")
                        continue
                obj = orjson.loads(payload)
                if "error" in obj and "choices" not in obj:
                    if out:
                        await send({"type": "http.response.body", "body": b"".join(out),
                                    "more_body": True})  # fmt: skip
                    return "engine_error", error_event(
                        "engine_error", "The engine failed mid-stream."
                    )
                obj["model"] = alias
                usage = obj.get("usage")
                if usage:
                    call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    call.completion_tokens = int(usage.get("completion_tokens") or 0)
                choices = obj.get("choices")
                if not choices:
                    if usage and include_usage:
                        out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
                    continue
                if not include_usage:
                    obj.pop("usage", None)
                if collect:
                    delta = choices[0].get("delta") or choices[0]
                    if isinstance(delta.get("content"), str):
                        text.append(delta["content"])
                    elif isinstance(delta.get("text"), str):
                        text.append(delta["text"])
                    if delta.get("tool_calls"):
                        tool_calls = True
                out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
            if not out:
                continue
            now = time.perf_counter()
            call.overhead += now - t
            if first_at is None:
                if call.keepalive is not None:
                    await call.keepalive.stop()
                if call.trace is not None:
                    call.trace.mark("first_token")
                first_at = now
                metrics.observe_ttft(
                    call.tenant_id, call.alias, call.release_id, call.arm, now - call.started
                )
            else:
                gaps.append(now - last_at)
            last_at = now
            await send(
                {"type": "http.response.body", "body": b"".join(out) if len(out) > 1 else out[0],
                 "more_body": True}
            )  # fmt: skip
        if not saw_done:
            return "engine_error", error_event(
                "engine_error", "The engine stream ended unexpectedly."
            )
        content = "".join(text)
        # A tool call has no content to judge: schema and refusal checks apply to content only.
        verdict = guard.check_none() if tool_calls and not content else guard.check(content)
        record_guard(metrics, call, verdict)
        if verdict.schema_violation and guard.reject:
            return "schema_violation", error_event(
                "schema_violation", "The model output did not match the schema."
            )
        return "ok", DONE_EVENT
    except _MID_STREAM:
        return "engine_error", error_event("engine_error", "The engine failed mid-stream.")
    finally:
        if gaps:
            metrics.observe_itl(call.tenant_id, call.alias, call.release_id, call.arm, gaps)
