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

from gateway.engines.fairqueue import Flow
from gateway.engines.pool import queue_limited
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
from registry.errors import RegistryUnavailable
from registry.keyrules import alias_allowed, key_refusal
from registry.models import (
    PRIORITY_CLASSES,
    AdapterVersion,
    ApiKey,
    Arm,
    PriorityClass,
    Release,
    Tenant,
)
from registry.secrets import cache_salt, hash_key
from registry.state import RegistryState

__all__ = ["Call", "authenticate", "handle_chat", "new_request_id", "render_release", "resolve"]
log = logging.getLogger("loragate.chat")


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
    secrets = tuple(state.key_secrets.values()) or (state.hmac_secret,)
    key_hmac = hash_key(secrets[0], token)  # the current secret: new keys are made under it
    record = snapshot.tenant_for_key(key_hmac)
    for older in secrets[1:]:  # rotation: one more HMAC (~1 us) per older secret still verified
        if record is not None:
            break
        record = snapshot.tenant_for_key(hash_key(older, token))
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
    check_key(state, tenant, record)
    return tenant, record


def check_key(state: AppState, tenant: Tenant, key: ApiKey) -> None:
    """Suspension and expiry from the snapshot's records; notes the key's use for its listing
    (written to Redis once a minute by gateway/admin/keyuse.py, never here)."""
    now = time.time()
    refusal = key_refusal(tenant, key, now)
    if refusal == "tenant_suspended":
        raise ApiError("tenant_suspended", "This tenant is suspended.")
    if refusal is not None:
        raise ApiError("invalid_api_key", "The API key has expired.")
    state.key_use[key.key_hmac] = int(now // 60)


def flow_of(state: AppState, tenant: Tenant, priority: PriorityClass | None = None) -> Flow:
    """The tenant's place in the fair queue: its weight and class (registry, else its plan's);
    an alias's `priority` flag overrides the class."""
    plan = state.settings.scheduling_for(tenant.plan)
    weight = tenant.weight if tenant.weight is not None else plan.weight
    cls = priority or tenant.priority or plan.priority
    return Flow(tenant.id, weight, PRIORITY_CLASSES.index(cls))


def resolve(state: AppState, snapshot: RegistryState, call: Call, chat: ChatRequest) -> Rendering:
    """Alias -> arm -> release -> what the engine request is made of (pure over the snapshot)."""
    assert call.tenant is not None
    assert call.key is not None
    if not alias_allowed(call.key, chat.alias):
        raise ApiError("model_not_allowed", "This API key may not use this model.")
    alias = snapshot.alias(call.tenant.id, chat.alias)
    if alias is None or alias.stable is None:
        raise model_not_found(chat.alias)
    call.alias = alias.alias
    call.flow = flow_of(state, call.tenant, alias.flags.priority)
    arm: Arm = select_arm(alias, call.tenant.id, chat.user or call.key.key_id)
    release_id = alias.canary if arm == "canary" and alias.canary else alias.stable
    if alias.flags.kill_switch:
        arm, release_id = "stable", alias.stable
    release = snapshot.release(call.tenant.id, release_id)
    if release is None:
        raise model_not_found(chat.alias)
    rendering, adapter = render_release(
        state, snapshot, call.tenant, release, base_model_only=alias.flags.kill_switch
    )
    call.arm, call.release, call.adapter = arm, release, adapter
    return rendering


def render_release(
    state: AppState,
    snapshot: RegistryState,
    tenant: Tenant,
    release: Release,
    *,
    base_model_only: bool = False,
) -> tuple[Rendering, AdapterVersion | None]:
    """What a release contributes to an engine request, and the adapter it is served through.
    The tenant path and the evaluation gate both render here, so a release is evaluated as it
    is served. `base_model_only`: the kill switch (base model with the release's prompt)."""
    adapter, prompt = snapshot.release_parts(release)
    if base_model_only:
        adapter = None
    if adapter is None:
        adapter = state.base_adapter  # the zero LoRA, when configured (see adapters/nulladapter)
    defaults: dict[str, Any] = {}
    if prompt is not None:
        defaults.update(prompt.params)
    defaults.update(release.params)
    rendering = Rendering(
        engine_model=adapter.engine_name if adapter else state.settings.base_model,
        system_prompt=prompt.system_prompt if prompt is not None else None,
        defaults=defaults,
        response_schema=prompt.response_schema if prompt is not None else None,
        cache_salt=cache_salt(state.hmac_secret, tenant.id),
        max_tokens_cap=tenant.limits.max_tokens or state.settings.default_max_tokens_cap,
    )
    return rendering, adapter


async def handle_chat(state: AppState, scope: Scope, receive: Receive, send: Send) -> None:
    """POST /v1/chat/completions as raw ASGI. Every outcome is metered once (`finish`); a client
    that disconnects cancels the work (and the engine request) and is metered `cancelled`."""
    call = Call(request_id=new_request_id(), started=time.perf_counter())
    call.headers["x-request-id"] = call.request_id
    watch: Disconnect | None = None
    try:
        authorization, length = request_headers(scope)
        call.tenant, call.key = await authenticate(state, authorization)
        if state.pool.shedding(flow_of(state, call.tenant)):
            # Refuse the tenant's own excess before parsing it (metered without an alias).
            raise queue_limited()
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
        if state.settings.engine_priority_scheduling and call.flow is not None:
            # Set by the gateway only: a client's `priority` is refused in parse_chat_request.
            engine_body["priority"] = call.flow.band
        guard = OutputGuard.for_release(snapshot, call.release)
        # Limits are decided here, before any engine call; 429s leave with Retry-After.
        call.reservation = await state.limiter.admit(
            call.tenant,
            call.request_id,
            prompt_tokens=estimate_prompt_tokens(engine_body.get("messages") or []),
            max_tokens=engine_body.get("max_tokens"),
        )
        call.headers.update(call.reservation.headers)
        call.key_reservation = await state.limiter.admit_key(
            call.tenant,
            call.key,
            call.request_id,
            prompt_tokens=estimate_prompt_tokens(engine_body.get("messages") or []),
            max_tokens=engine_body.get("max_tokens"),
        )
        watch = Disconnect(receive)
        exchange = relay.Exchange(state, send, call, chat, engine_body, guard, watch)
        await (relay.stream if chat.stream else relay.complete)(exchange)
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
        for held in (call.reservation, call.key_reservation):
            if held is not None:
                state.limiter.release(held)
