"""The tenant request pipeline: authenticate, resolve, choose the arm, render, send, relay, meter.

    HTTP in -> key HMAC -> snapshot lookup -> alias -> arm -> release -> render -> engine -> relay

Everything before the engine call reads the in-process registry snapshot: zero Redis round trips in
steady state. Retries go to another replica only while nothing has reached the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from adapters.errors import ArtifactError, EngineLoadFailed, EngineUnavailable
from gateway.errors import ApiError, from_domain, model_not_found, status_of
from gateway.guard import OutputGuard, Verdict
from gateway.limits import Reservation, estimate_prompt_tokens
from gateway.render import ChatRequest, Limits, Rendering, parse_chat_request, render_engine_body
from gateway.sse import (
    DONE,
    DONE_EVENT,
    SseParser,
    SseProtocolError,
    encode_json_event,
    error_event,
)
from gateway.state import AppState
from gateway.upstream import UpstreamError, UpstreamFailed, open_chat
from registry.canary import select_arm
from registry.errors import RegistryUnavailable
from registry.models import AdapterVersion, ApiKey, Arm, Release, Tenant
from registry.secrets import cache_salt, hash_key
from registry.snapshot import RegistryState

log = logging.getLogger("loragate.chat")
MAX_ATTEMPTS = 2
T = TypeVar("T")


@dataclass
class Call:
    """One tenant request on its way through the gateway (labels are registered ids only)."""

    request_id: str
    started: float
    tenant: Tenant | None = None
    key: ApiKey | None = None
    alias: str = "unknown"
    release: Release | None = None
    arm: Arm = "stable"
    adapter: AdapterVersion | None = None
    overhead: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    reservation: Reservation | None = None  # tenant limits; settled once in _finish
    verdict: Verdict = field(default_factory=Verdict)  # output checks, for the canary windows

    @property
    def release_id(self) -> str:
        return self.release.id if self.release is not None else "unknown"

    @property
    def tenant_id(self) -> str:
        return self.tenant.id if self.tenant is not None else "unknown"


def new_request_id() -> str:
    return "req-" + os.urandom(12).hex()


async def authenticate(state: AppState, authorization: str | None) -> tuple[Tenant, ApiKey]:
    """Known keys are answered from the snapshot (no Redis call). A key the snapshot does not know
    is asked of Redis once, under the store's hard timeout: it may have been issued a moment ago
    on another gateway process. When Redis cannot answer, the caller gets 503, never 401."""
    if not authorization or not authorization.startswith("Bearer "):
        raise ApiError("invalid_api_key", "Missing or malformed API key.")
    token = authorization[7:].strip()
    if not token or len(token) > 256:
        raise ApiError("invalid_api_key", "Invalid API key.")
    snapshot = state.watcher.state
    key_hmac = hash_key(state.hmac_secret, token)
    record = snapshot.tenant_for_key(key_hmac)
    if record is None:
        try:
            record = await state.store.find_key(key_hmac)
        except RegistryUnavailable:
            raise ApiError(
                "auth_backend_unavailable", "Key verification is unavailable; retry."
            ) from None
        if record is None or record.revoked:
            raise ApiError("invalid_api_key", "Invalid API key.")
    tenant = snapshot.tenants.get(record.tenant)
    if tenant is None:
        raise ApiError("invalid_api_key", "Invalid API key.")
    return tenant, record


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most `limit` bytes, counting what actually arrives (Content-Length may lie)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError("payload_too_large", f"The request body exceeds {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError("payload_too_large", f"The request body exceeds {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def resolve(state: AppState, snapshot: RegistryState, call: Call, chat: ChatRequest) -> Rendering:
    """Alias -> arm -> release -> what the engine request is made of (pure over the snapshot)."""
    assert call.tenant is not None
    assert call.key is not None
    alias = snapshot.alias(call.tenant.id, chat.alias)
    if alias is None or alias.stable is None:
        raise model_not_found(chat.alias)
    call.alias = alias.alias
    arm: Arm = select_arm(alias, call.tenant.id, chat.user or call.key.key_id)
    release_id = alias.canary if arm == "canary" and alias.canary else alias.stable
    if alias.flags.kill_switch:
        arm, release_id = "stable", alias.stable
    release = snapshot.release(call.tenant.id, release_id)
    if release is None:
        raise model_not_found(chat.alias)
    adapter, prompt = snapshot.release_parts(release)
    if alias.flags.kill_switch:
        adapter = None  # base model with the stable prompt
    call.arm, call.release, call.adapter = arm, release, adapter
    defaults: dict[str, Any] = {}
    if prompt is not None:
        defaults.update(prompt.params)
    defaults.update(release.params)
    return Rendering(
        engine_model=adapter.engine_name if adapter else state.settings.base_model,
        system_prompt=prompt.system_prompt if prompt is not None else None,
        defaults=defaults,
        response_schema=prompt.response_schema if prompt is not None else None,
        cache_salt=cache_salt(state.hmac_secret, call.tenant.id),
        max_tokens_cap=call.tenant.limits.max_tokens or state.settings.default_max_tokens_cap,
    )


class RelayResponse(StreamingResponse):
    """A streaming response whose cleanup runs even if the body is never iterated."""

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(body, media_type="text/event-stream", **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def handle_chat(state: AppState, request: Request) -> Response:
    call = Call(request_id=new_request_id(), started=time.perf_counter())
    call.headers["x-request-id"] = call.request_id
    relayed = False
    try:
        call.tenant, call.key = await authenticate(state, request.headers.get("authorization"))
        raw = await read_body(request, state.settings.max_body_bytes)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError("invalid_request", "The request body is not valid JSON.") from None
        limits = Limits(
            max_messages=state.settings.max_messages,
            max_n=state.settings.max_n,
            max_tokens_cap=call.tenant.limits.max_tokens or state.settings.default_max_tokens_cap,
        )
        chat = parse_chat_request(body, limits)
        rendering = resolve(state, state.watcher.state, call, chat)
        call.headers["x-loragate-release"] = call.release_id
        engine_body = render_engine_body(chat, rendering)
        guard = OutputGuard.for_release(state.watcher.state, call.release)
        # Limits are decided here, before any engine call; 429s leave with Retry-After.
        call.reservation = await state.limiter.admit(
            call.tenant,
            call.request_id,
            prompt_tokens=estimate_prompt_tokens(engine_body.get("messages") or []),
            max_tokens=engine_body.get("max_tokens"),
        )
        call.headers.update(call.reservation.headers)
        if chat.stream:
            response = await _stream(state, request, call, chat, engine_body, guard)
            relayed = isinstance(response, RelayResponse)  # its close() settles the slot
            return response
        return await _complete(state, request, call, chat, engine_body, guard)
    except Exception as exc:
        error = from_domain(exc)
        if error.code == "internal_error":
            log.exception("unhandled error in chat request %s", call.request_id)
        _finish(state, call, error.code)
        return error.to_response(call.headers)
    finally:
        # Cancellation skips _finish: free the slot anyway (a no-op once settled).
        if call.reservation is not None and not relayed:
            state.limiter.release(call.reservation)


async def _open(
    state: AppState, call: Call, engine_body: dict[str, Any]
) -> tuple[Any, aiohttp.ClientResponse]:
    """Lease a replica and open the engine request, retrying elsewhere before any byte is sent."""
    pool = state.pool
    settings = state.settings
    exclude: frozenset[str] = frozenset()
    for attempt in range(MAX_ATTEMPTS):
        try:
            lease = await pool.acquire(call.adapter, exclude=exclude)
        except (EngineUnavailable, EngineLoadFailed):
            if attempt + 1 >= MAX_ATTEMPTS:
                raise
            continue
        except ArtifactError as exc:
            log.error("adapter artifact failed its digest check: %s", exc.code)
            raise ApiError("adapter_load_failed", "The adapter could not be loaded.") from None
        engine_body["model"] = lease.engine_model
        call.overhead += time.perf_counter() - call.started
        try:
            response = await open_chat(
                state.session,
                lease.replica.url,
                engine_body,
                connect_timeout=settings.engine_connect_timeout_s,
                read_timeout=settings.engine_read_timeout_s,
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
        return lease, response
    raise ApiError(
        "engine_unavailable", "No engine replica could serve the request; retry shortly."
    )


def _scrub(message: str, engine_model: str, call: Call) -> str:
    """Engine messages may name the engine adapter; tenants only ever see their alias."""
    return message.replace(engine_model, call.alias)[:500]


async def _complete(
    state: AppState,
    request: Request,
    call: Call,
    chat: ChatRequest,
    engine_body: dict[str, Any],
    guard: OutputGuard,
) -> Response:
    async def run() -> bytes:
        lease, response = await _open(state, call, engine_body)
        try:
            raw = await response.read()
            response.release()
            return raw
        except BaseException:
            response.close()  # drops the connection: vLLM aborts the request
            raise
        finally:
            state.pool.release(lease)

    try:
        raw = await _until_disconnect(request, run())
    except (aiohttp.ClientError, TimeoutError):
        raise ApiError("engine_unavailable", "The engine failed during the request.") from None
    if raw is None:
        _finish(state, call, "cancelled")
        return Response(status_code=499)
    t_post = time.perf_counter()
    data = orjson.loads(raw)
    data["model"] = chat.alias
    usage = data.get("usage") or {}
    call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    call.completion_tokens = int(usage.get("completion_tokens") or 0)
    choices = data.get("choices") or []
    text = ""
    if choices and isinstance(choices[0], dict):
        text = str((choices[0].get("message") or {}).get("content") or "")
    verdict = guard.check(text)
    _record_guard(state, call, verdict)
    if verdict.schema_violation and guard.reject:
        _finish(state, call, "schema_violation")
        return ApiError(
            "schema_violation", "The model output did not match the release's schema."
        ).to_response(call.headers)
    payload = orjson.dumps(data)
    call.overhead += time.perf_counter() - t_post
    _finish(state, call, "ok")
    return Response(payload, media_type="application/json", headers=call.headers)


async def _until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work`; if the client disconnects first, cancel it (which aborts the engine request)."""
    task: asyncio.Task[T] = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):  # the client is gone; the abort is what matters
        await task
    return None


async def _stream(
    state: AppState,
    request: Request,
    call: Call,
    chat: ChatRequest,
    engine_body: dict[str, Any],
    guard: OutputGuard,
) -> Response:
    # Until the engine sends its headers nothing watches the client: a client that leaves while
    # the engine queues or prefills must still abort the engine request.
    opened = await _until_disconnect(request, _open(state, call, engine_body))
    if opened is None:
        _finish(state, call, "cancelled")
        return Response(status_code=499)
    lease, response = opened
    outcome = {"status": "cancelled", "clean": False}

    def close() -> None:
        if outcome["clean"]:
            response.release()
        else:
            response.close()  # abort at the engine
        state.pool.release(lease)
        if not outcome.get("finished"):
            outcome["finished"] = True
            _finish(state, call, str(outcome["status"]))

    async def relay() -> AsyncIterator[bytes]:
        parser = SseParser()
        saw_done = False
        first_at: float | None = None
        last_at = 0.0
        text: list[str] = []
        gaps: list[float] = []
        try:
            async for chunk in response.content.iter_any():
                for payload in parser.feed(chunk):
                    if payload == DONE:
                        saw_done = True
                        continue
                    t = time.perf_counter()
                    obj = orjson.loads(payload)
                    if "error" in obj and "choices" not in obj:
                        outcome["status"] = "engine_error"
                        yield error_event("engine_error", "The engine failed mid-stream.")
                        return
                    obj["model"] = chat.alias
                    usage = obj.get("usage")
                    if usage:
                        call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        call.completion_tokens = int(usage.get("completion_tokens") or 0)
                    choices = obj.get("choices")
                    if not choices:
                        if usage and chat.include_usage:
                            yield encode_json_event(obj)
                        continue
                    if not chat.include_usage:
                        obj.pop("usage", None)
                    if guard.active:
                        delta = choices[0].get("delta") or {}
                        if isinstance(delta.get("content"), str):
                            text.append(delta["content"])
                    out = encode_json_event(obj)
                    now = time.perf_counter()
                    call.overhead += now - t
                    if first_at is None:
                        first_at = now
                        state.metrics.observe_ttft(
                            call.tenant_id,
                            call.alias,
                            call.release_id,
                            call.arm,
                            now - call.started,
                        )
                    else:
                        gaps.append(now - last_at)
                    last_at = now
                    yield out
            if not saw_done:
                outcome["status"] = "engine_error"
                yield error_event("engine_error", "The engine stream ended unexpectedly.")
                return
            verdict = guard.check("".join(text))
            _record_guard(state, call, verdict)
            if verdict.schema_violation and guard.reject:
                outcome["status"] = "schema_violation"
                yield error_event("schema_violation", "The model output did not match the schema.")
                return
            outcome["clean"] = True
            outcome["status"] = "ok"
            yield DONE_EVENT
        except (aiohttp.ClientError, TimeoutError, SseProtocolError, orjson.JSONDecodeError):
            outcome["status"] = "engine_error"
            yield error_event("engine_error", "The engine failed mid-stream.")
        finally:
            if gaps:
                state.metrics.observe_itl(
                    call.tenant_id, call.alias, call.release_id, call.arm, gaps
                )

    return RelayResponse(relay(), close, headers=call.headers)


def _record_guard(state: AppState, call: Call, verdict: Verdict) -> None:
    call.verdict = verdict
    if verdict.refusal:
        state.metrics.count_refusal(call.tenant_id, call.alias, call.release_id, call.arm)
    if verdict.schema_violation:
        state.metrics.count_schema_violation(call.tenant_id, call.alias, call.release_id, call.arm)


def _finish(state: AppState, call: Call, code: str) -> None:
    """Meter the request once, whatever its outcome."""
    duration = time.perf_counter() - call.started
    if code in ("ok", "cancelled"):
        status = code
    else:
        status = "server_error" if status_of(code) >= 500 else "client_error"
    cost = 0.0
    if call.tenant is not None:
        price = state.settings.price_for(call.tenant.plan)
        cost = price.cost(call.prompt_tokens, call.completion_tokens)
    if call.reservation is not None:
        state.limiter.settle(call.reservation, call.prompt_tokens, call.completion_tokens, cost)
    state.metrics.observe_request(
        tenant=call.tenant_id,
        model=call.alias,
        release=call.release_id,
        arm=call.arm,
        status=status,
        duration_s=duration,
        overhead_s=call.overhead,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        cost=cost,
    )
    state.canary_windows.observe(
        call.tenant_id, call.alias, call.arm, call.release_id, status, duration,
        call.verdict.refusal, call.verdict.schema_violation,
    )  # fmt: skip
    if status != "ok":
        state.metrics.count_error(call.tenant_id, code)
