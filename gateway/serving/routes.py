"""OpenAI-compatible tenant routes.

The request body is read raw and validated by `gateway.serving.render` (faster than model
parsing, and it names the offending field); the OpenAPI schema still documents it.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import ApiError
from gateway.serving.asgi import error_response
from gateway.serving.chat import authenticate, handle_chat, new_request_id
from gateway.state import AppState
from registry.keyrules import alias_allowed

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=None)  # schema: gateway/openapi.py
async def chat_completions(request: Request) -> Response:
    """Documents the route; `gateway.app.Gateway` serves it as raw ASGI before routing."""
    return _RawChat(request.app.state.lg)


class _RawChat(Response):
    """Hands the exchange to the raw ASGI handler (reached only if the fast path is bypassed)."""

    def __init__(self, state: AppState) -> None:
        super().__init__()
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await handle_chat(self._state, scope, receive, send)


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
