"""The tenant request pipeline: authenticate, resolve, choose the arm, render, send, relay, meter.

    HTTP in -> key HMAC -> snapshot lookup -> alias -> arm -> release -> render -> engine -> relay

Everything before the engine call reads the in-process registry snapshot: zero Redis round trips in
steady state. Retries go to another replica only while nothing has reached the client. The route
is raw ASGI (`handle_chat(state, scope, receive, send)`), mounted ahead of FastAPI by
`gateway.app.Gateway`; the engine side lives in `gateway.serving.relay`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from gateway.errors import ApiError, from_domain, model_not_found
from gateway.limits.quota import estimate_prompt_tokens
from gateway.serving import relay
from gateway.serving.asgi import ClientGone, Disconnect, read_body, request_headers, send_error
from gateway.serving.call import Call, finish, new_request_id
from gateway.serving.output_checks import OutputGuard
from gateway.serving.render import (
    ChatRequest,
    Limits,
    Rendering,
    parse_chat_request,
    render_engine_body,
)
from gateway.serving.sse import error_event
from gateway.state import AppState
from registry.canary import select_arm
from registry.compact import AnyAdapter, AnyKey, AnyTenant
from registry.errors import RegistryUnavailable
from registry.models import Arm
from registry.secrets import cache_salt, hash_key
from registry.state import RegistryState

__all__ = ["Call", "authenticate", "handle_chat", "new_request_id", "resolve"]
log = logging.getLogger("loragate.chat")


async def authenticate(state: AppState, authorization: str | None) -> tuple[AnyTenant, AnyKey]:
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
    record: AnyKey | None = snapshot.tenant_for_key(key_hmac)
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
    parts = snapshot.release_parts(release)
    adapter: AnyAdapter | None = parts[0]
    prompt = parts[1]
    if alias.flags.kill_switch:
        adapter = None  # base model with the stable prompt
    if adapter is None:
        adapter = state.base_adapter  # the zero LoRA, when configured (see adapters/nulladapter)
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


async def handle_chat(state: AppState, scope: Scope, receive: Receive, send: Send) -> None:
    """POST /v1/chat/completions as raw ASGI. Every outcome is metered once (`finish`); a client
    that disconnects cancels the work (and the engine request) and is metered `cancelled`."""
    call = Call(request_id=new_request_id(), started=time.perf_counter())
    call.headers["x-request-id"] = call.request_id
    watch: Disconnect | None = None
    try:
        authorization, length = request_headers(scope)
        call.tenant, call.key = await authenticate(state, authorization)
        if state.pool.shedding():  # refuse a burst before parsing it (metered without an alias)
            raise ApiError("overloaded", "The gateway is at capacity; retry shortly.")
        raw = await read_body(receive, state.settings.max_body_bytes, length)
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
        call.stream = chat.stream
        snapshot = state.watcher.state
        rendering = resolve(state, snapshot, call, chat)
        call.headers["x-loragate-release"] = call.release_id
        engine_body = render_engine_body(chat, rendering)
        guard = OutputGuard.for_release(snapshot, call.release)
        # Limits are decided here, before any engine call; 429s leave with Retry-After.
        call.reservation = await state.limiter.admit(
            call.tenant,
            call.request_id,
            prompt_tokens=estimate_prompt_tokens(engine_body.get("messages") or []),
            max_tokens=engine_body.get("max_tokens"),
        )
        call.headers.update(call.reservation.headers)
        watch = Disconnect(receive)
        if chat.stream:
            await relay.stream(state, send, call, chat, engine_body, guard, watch)
        else:
            await relay.complete(state, send, call, chat, engine_body, guard, watch)
    except asyncio.CancelledError:
        finish(state, call, "cancelled")
        if watch is None or not watch.gone:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the cancellation was ours: the client left
    except ClientGone:
        finish(state, call, "cancelled")
    except Exception as exc:
        error = from_domain(exc)
        if error.code == "internal_error":
            log.exception("unhandled error in chat request %s", call.request_id)
        # The traceback holds this frame (and the body read so far): without this, that cycle
        # keeps up to max_body_bytes alive per refused request until a full collection.
        exc.__traceback__ = error.__traceback__ = None
        if watch is not None:
            watch.stop()
        finish(state, call, error.code)
        if call.responded:  # a stream already started: end it with one error event
            event = error_event(error.code, "The gateway failed mid-stream.")
            await send({"type": "http.response.body", "body": event, "more_body": False})
        else:
            await send_error(send, error, call.headers)
    finally:
        if watch is not None:
            watch.stop()
        # Cancellation from outside skips finish(): free the slot anyway (no-op once settled).
        if call.reservation is not None:
            state.limiter.release(call.reservation)
