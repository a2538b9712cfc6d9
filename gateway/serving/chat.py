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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from adapters.errors import QueueLimited
from gateway.engines.fairqueue import Flow
from gateway.errors import ApiError, from_domain, model_not_found
from gateway.limits.quota import estimate_prompt_tokens
from gateway.observability.tracing import valid_traceparent
from gateway.serving import relay
from gateway.serving.asgi import ClientGone, Disconnect, read_body, request_headers, send_error
from gateway.serving.call import Call, finish, new_request_id
from gateway.serving.output_checks import OutputGuard
from gateway.serving.render import (
    ALLOW_TOOLS,
    ChatRequest,
    Limits,
    Rendering,
    parse_chat_request,
    render_engine_body,
)
from gateway.serving.sse import error_event
from gateway.serving.tools import ToolPolicy
from gateway.state import AppState
from registry.canary import select_arm
from registry.compact import AnyAdapter, AnyKey, AnyPrompt, AnyRelease, AnyTenant
from registry.errors import RegistryUnavailable
from registry.keyrules import alias_allowed, key_refusal
from registry.models import (
    PRIORITY_CLASSES,
    Arm,
    PriorityClass,
)
from registry.secrets import cache_salt, hash_key
from registry.state import RegistryState

__all__ = [
    "Call",
    "Route",
    "authenticate",
    "handle_chat",
    "new_request_id",
    "render_release",
    "resolve",
    "serve",
]
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
    secrets = tuple(state.key_secrets.values()) or (state.hmac_secret,)
    key_hmac = hash_key(secrets[0], token)  # the current secret: new keys are made under it
    record: AnyKey | None = snapshot.tenant_for_key(key_hmac)
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


def check_key(state: AppState, tenant: AnyTenant, key: AnyKey) -> None:
    """Suspension and expiry from the snapshot's records; notes the key's use for its listing
    (written to Redis once a minute by gateway/admin/keyuse.py, never here)."""
    now = time.time()
    refusal = key_refusal(tenant, key, now)
    if refusal == "tenant_suspended":
        raise ApiError("tenant_suspended", "This tenant is suspended.")
    if refusal is not None:
        raise ApiError("invalid_api_key", "The API key has expired.")
    state.key_use[key.key_hmac] = int(now // 60)


def flow_of(state: AppState, tenant: AnyTenant, priority: PriorityClass | None = None) -> Flow:
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
    tenant: AnyTenant,
    release: AnyRelease,
    *,
    base_model_only: bool = False,
) -> tuple[Rendering, AnyAdapter | None]:
    """What a release contributes to an engine request, and the adapter it is served through.
    The tenant path and the evaluation gate both render here, so a release is evaluated as it
    is served. `base_model_only`: the kill switch (base model with the release's prompt)."""
    parts = snapshot.release_parts(release)
    adapter: AnyAdapter | None = parts[0]
    prompt = parts[1]
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
        tools=_tool_policy(prompt),
        completions=prompt.completions if prompt is not None else "prefix",
    )
    return rendering, adapter


def _tool_policy(prompt: AnyPrompt | None) -> ToolPolicy:
    if prompt is None or (prompt.tool_use == "allow" and prompt.allowed_tools is None):
        return ALLOW_TOOLS
    return ToolPolicy(prompt.tool_use, prompt.allowed_tools)


def limits_for(state: AppState, tenant: AnyTenant) -> Limits:
    return Limits(
        max_messages=state.settings.max_messages,
        max_n=tenant.limits.max_n or state.settings.max_n,
        max_tokens_cap=tenant.limits.max_tokens or state.settings.default_max_tokens_cap,
    )


def begin(state: AppState, scope: Scope, span_name: str) -> Call:
    """A new call with its request id; its trace (tracing on) or the client's traceparent."""
    call = Call(request_id=new_request_id(), started=time.perf_counter())
    call.headers["x-request-id"] = call.request_id
    traceparent = None
    for name, value in scope["headers"]:
        if name == b"traceparent":
            traceparent = value.decode("latin-1")
    if state.tracing is not None:
        call.trace = state.tracing.begin(span_name, traceparent)
    elif traceparent is not None:
        call.traceparent = valid_traceparent(traceparent)
    return call


async def admit(
    state: AppState, call: Call, messages: list[dict[str, Any]], engine_body: dict[str, Any]
) -> None:
    """Limits are decided here, before any engine call; 429s leave with Retry-After. Each of `n`
    choices may use `max_tokens`."""
    assert call.tenant is not None
    max_tokens = engine_body.get("max_tokens")
    if isinstance(max_tokens, int):
        max_tokens *= engine_body.get("n") or 1
    prompt_tokens = estimate_prompt_tokens(messages)
    call.reservation = await state.limiter.admit(
        call.tenant, call.request_id, prompt_tokens=prompt_tokens, max_tokens=max_tokens
    )
    call.headers.update(call.reservation.headers)
    assert call.key is not None
    call.key_reservation = await state.limiter.admit_key(
        call.tenant, call.key, call.request_id, prompt_tokens=prompt_tokens, max_tokens=max_tokens
    )
    if call.trace is not None:
        call.trace.mark("limits")


@dataclass(frozen=True)
class Prepared:
    """A validated request, resolved against the snapshot and rendered for the engine."""

    request: ChatRequest
    engine_body: dict[str, Any]
    guard: OutputGuard
    prompt_messages: list[dict[str, Any]]  # for the limiter's prompt-token estimate


@dataclass(frozen=True)
class Route:
    """What differs between the OpenAI generation routes (chat, text completions)."""

    span: str
    engine_path: str
    prepare: Callable[[AppState, Call, object], Prepared]


def prepare_chat(state: AppState, call: Call, body: object) -> Prepared:
    assert call.tenant is not None
    chat = parse_chat_request(body, limits_for(state, call.tenant))
    call.stream = chat.stream
    if call.trace is not None:
        call.trace.mark("receive")
    snapshot = state.watcher.state
    rendering = resolve(state, snapshot, call, chat)
    call.headers["x-loragate-release"] = call.release_id
    engine_body = render_engine_body(chat, rendering)
    guard = OutputGuard.for_release(snapshot, call.release)
    return Prepared(chat, engine_body, guard, engine_body["messages"])


CHAT = Route("POST /v1/chat/completions", "/v1/chat/completions", prepare_chat)


async def handle_chat(state: AppState, scope: Scope, receive: Receive, send: Send) -> None:
    """POST /v1/chat/completions as raw ASGI."""
    await serve(state, scope, receive, send, CHAT)


async def serve(state: AppState, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
    """One generation request as raw ASGI. Every outcome is metered once (`finish`); a client
    that disconnects cancels the work (and the engine request) and is metered `cancelled`."""
    call = begin(state, scope, route.span)
    call.engine_path = route.engine_path
    watch: Disconnect | None = None
    try:
        authorization, length = request_headers(scope)
        call.tenant, call.key = await authenticate(state, authorization)
        if call.trace is not None:
            call.trace.mark("auth")
        if state.pool.shedding(flow_of(state, call.tenant)):
            # Refuse the tenant's own excess before parsing it (metered without an alias).
            raise QueueLimited("this tenant's share of the wait queue is full")
        raw = await read_body(receive, state.settings.max_body_bytes, length)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError("invalid_request", "The request body is not valid JSON.") from None
        prepared = route.prepare(state, call, body)
        chat, engine_body, guard = prepared.request, prepared.engine_body, prepared.guard
        if state.settings.engine_priority_scheduling and call.flow is not None:
            # Set by the gateway only: a client's `priority` is refused when the body is parsed.
            engine_body["priority"] = call.flow.band
        if call.trace is not None:
            call.trace.mark("resolve")
        await admit(state, call, prepared.prompt_messages, engine_body)
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
        if call.keepalive is not None:
            await call.keepalive.stop()
        error = from_domain(exc)
        if error.code == "internal_error":
            log.exception("unhandled error in request %s", call.request_id)
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
        if call.keepalive is not None:
            call.keepalive.cancel()
        # Cancellation from outside skips finish(): free the slot anyway (no-op once settled).
        for held in (call.reservation, call.key_reservation):
            if held is not None:
                state.limiter.release(held)
