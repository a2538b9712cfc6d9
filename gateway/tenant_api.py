"""OpenAI-compatible tenant routes.

The request body is read raw and validated by `gateway.render` (faster than model parsing, and it
names the offending field); the OpenAPI schema still documents it.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.chat import authenticate, handle_chat, new_request_id
from gateway.errors import ApiError
from gateway.state import AppState

CHAT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "your model alias"},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": {"type": "string"},
                },
            },
        },
        "stream": {"type": "boolean"},
        "stream_options": {
            "type": "object",
            "properties": {"include_usage": {"type": "boolean"}},
            "additionalProperties": False,
        },
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": {"type": "integer"},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "user": {"type": "string", "maxLength": 256},
    },
}

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post(
    "/chat/completions",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_SCHEMA}}}
    },
    response_model=None,
)
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
        tenant, _ = await authenticate(state, request.headers.get("authorization"))
    except ApiError as exc:
        return exc.to_response(headers)
    snapshot = state.watcher.state
    data = [
        {"id": a.alias, "object": "model", "created": 0, "owned_by": tenant.id}
        for a in sorted(snapshot.aliases_of(tenant.id), key=lambda a: a.alias)
        if a.stable is not None
    ]
    return Response(
        orjson.dumps({"object": "list", "data": data}),
        media_type="application/json",
        headers=headers,
    )
