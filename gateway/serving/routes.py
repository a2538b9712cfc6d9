"""OpenAI-compatible tenant routes.

The request body is read raw and validated by `gateway.serving.render` (faster than model
parsing, and it names the offending field); the OpenAPI schema still documents it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import ApiError, model_not_found
from gateway.serving.asgi import error_response
from gateway.serving.chat import authenticate, handle_chat, new_request_id
from gateway.serving.completions import handle_completions
from gateway.state import AppState
from registry.keyrules import alias_allowed

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=None)  # schema: gateway/openapi.py
async def chat_completions(request: Request) -> Response:
    """Documents the route; `gateway.app.Gateway` serves it as raw ASGI before routing."""
    return _RawChat(request.app.state.lg)


@router.post("/completions", response_model=None)  # schema: gateway/openapi.py
async def completions(request: Request) -> Response:
    """Documents the route; `gateway.app.Gateway` serves it as raw ASGI before routing."""
    return _RawChat(request.app.state.lg, handle_completions)


class _RawChat(Response):
    """Hands the exchange to the raw ASGI handler (reached only if the fast path is bypassed)."""

    def __init__(self, state: AppState, handler: RawHandler = handle_chat) -> None:
        super().__init__()
        self._state = state
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handler(self._state, scope, receive, send)


RawHandler = Callable[[AppState, Scope, Receive, Send], Awaitable[None]]


@router.get("/models", response_model=None)
async def list_models(request: Request) -> Response:
    state: AppState = request.app.state.lg
    headers = {"x-request-id": new_request_id()}
    try:
        tenant, key = await authenticate(state, request.headers.get("authorization"))
    except ApiError as exc:
        return error_response(exc, headers)
    snapshot = state.watcher.state
    data = [
        {"id": a.alias, "object": "model", "created": 0, "owned_by": tenant.id}
        for a in sorted(snapshot.aliases_of(tenant.id), key=lambda a: a.alias)
        if a.stable is not None and alias_allowed(key, a.alias)
    ]
    return Response(
        orjson.dumps({"object": "list", "data": data}),
        media_type="application/json",
        headers=headers,
    )


@router.get("/models/{model:path}", response_model=None)  # "a/b" is one (unknown) id
async def retrieve_model(model: str, request: Request) -> Response:
    """One of the caller's aliases; another tenant's alias answers exactly as an unknown one."""
    state: AppState = request.app.state.lg
    headers = {"x-request-id": new_request_id()}
    try:
        tenant, _ = await authenticate(state, request.headers.get("authorization"))
        alias = state.watcher.state.alias(tenant.id, model)
        if alias is None or alias.stable is None:
            raise model_not_found(model)
    except ApiError as exc:
        return error_response(exc, headers)
    body = {"id": alias.alias, "object": "model", "created": 0, "owned_by": tenant.id}
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)
