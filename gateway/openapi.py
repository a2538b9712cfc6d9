"""The OpenAPI document at `/openapi.json`, made to say what the gateway really does.

FastAPI derives the admin routes' request and response bodies from their models
(gateway/admin/schemas.py); this module adds what it cannot know: the chat completions operation
(served by a raw Starlette route ahead of FastAPI's router, so it has no APIRoute to document),
the two bearer schemes (tenant key, admin token), and for every operation the error statuses it
can answer, each with the one error envelope of `gateway.errors` instead of FastAPI's
`HTTPValidationError`, which loragate never sends.

    app = FastAPI(...)
    install_openapi(app)      # app.openapi() builds the document once, on first use

The document is data built from tables (pure; no I/O).
`tests/security/test_security_schemathesis.py`
holds the gateway to it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.errors import CODES, RETRY_AFTER_CODES
from gateway.serving.completion_render import MAX_PROMPT_CHARS
from gateway.serving.render import FLAGS, FORBIDDEN, LISTS, MAX_LOGIT_BIAS, NUMERIC, ROLES
from gateway.serving.tools import MAX_TOOL_CALLS, MAX_TOOLS
from registry.models import NAME_PATTERN

TENANT_SCHEME = "TenantKey"
ADMIN_SCHEME = "AdminToken"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODEL_PATH = "/v1/models/{model}"
ADMIN_PREFIX = "/admin/v1/"

SECURITY_SCHEMES: dict[str, Any] = {
    TENANT_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "A tenant API key, as the OpenAI SDK sends it.",
    },
    ADMIN_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "An admin identity: the bootstrap token (`LORAGATE_ADMIN_TOKEN`), a named principal's "
            "token (`lga-...`) or an OIDC JWT; its role and tenants decide what it may do "
            "(403 `forbidden`; a tenant outside its scope is 404). A tenant key never opens it."
        ),
    },
}

_REF = "#/components/schemas/"

ERROR_RESPONSE: dict[str, Any] = {
    "title": "ErrorResponse",
    "description": "The OpenAI error envelope; `code` is specific, `param` names the field.",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string", "enum": sorted(CODES)},
            },
        }
    },
}

_USAGE: dict[str, Any] = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
    },
}

CHAT_COMPLETION: dict[str, Any] = {
    "title": "ChatCompletion",
    "description": "The engine's completion; `model` is the caller's alias, never an engine name.",
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "message": {
                        "type": "object",
                        "required": ["role"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": {"type": ["string", "null"]},
                            "tool_calls": {"type": ["array", "null"]},
                        },
                    },
                    "finish_reason": {"type": ["string", "null"]},
                },
            },
        },
        "usage": {"anyOf": [_USAGE, {"type": "null"}]},
    },
}

CHAT_COMPLETION_CHUNK: dict[str, Any] = {
    "title": "ChatCompletionChunk",
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion.chunk"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "delta"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "delta": {"type": "object"},
                    "finish_reason": {"type": ["string", "null"]},
                },
            },
        },
        "usage": {"anyOf": [_USAGE, {"type": "null"}]},
    },
}


def _sse_event(title: str, description: str, payload: str) -> dict[str, Any]:
    """One server-sent event (Open API before 3.2: the media type's schema describes each event):
    a `payload` chunk, `[DONE]` at the end, or instead of `[DONE]` one error event."""
    return {
        "title": title,
        "description": description,
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"const": "message"},
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {
                            "anyOf": [{"$ref": _REF + payload}, {"$ref": _REF + "ErrorResponse"}]
                        },
                    },
                ]
            },
        },
    }


SSE_EVENT = _sse_event(
    "ChatCompletionEvent",
    "One `data:` event: a chunk, the usage chunk (`stream_options.include_usage`), "
    "`[DONE]` at the end, or instead of `[DONE]` one error event when the stream fails.",
    "ChatCompletionChunk",
)

_TEXT_CHOICES: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["index", "text"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "text": {"type": "string"},
            "finish_reason": {"type": ["string", "null"]},
        },
    },
}

TEXT_COMPLETION: dict[str, Any] = {
    "title": "TextCompletion",
    "description": "The engine's completion of a raw prompt; `model` is the caller's alias.",
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "text_completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": _TEXT_CHOICES,
        "usage": {"anyOf": [_USAGE, {"type": "null"}]},
    },
}

TEXT_SSE_EVENT = _sse_event(
    "TextCompletionEvent",
    "One `data:` event of a streamed text completion (as for chat).",
    "TextCompletion",
)

MODEL: dict[str, Any] = {
    "title": "Model",
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}

MODEL_LIST: dict[str, Any] = {
    "title": "ModelList",
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "object", "created", "owned_by"],
                "properties": {
                    "id": {"type": "string"},
                    "object": {"const": "model"},
                    "created": {"type": "integer"},
                    "owned_by": {"type": "string"},
                },
            },
        },
    },
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _sampling() -> dict[str, Any]:
    """The numeric pass-through fields, with the bounds `gateway.serving.render` enforces."""
    out: dict[str, Any] = {}
    for name, (kind, low, high) in NUMERIC.items():
        kind_name = "integer" if kind is int else "number"
        out[name] = _nullable({"type": kind_name, "minimum": low, "maximum": high})
    out["n"]["description"] = (
        "At most the tenant's `limits.max_n`, else the gateway's `max_n` (1 by default); "
        "more is a 400."
    )
    return out


_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": sorted(ROLES)},
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "null"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                    },
                },
            ]
        },
        "name": {"type": "string"},
        "tool_calls": _nullable(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TOOL_CALLS,
                "items": {
                    "type": "object",
                    "required": ["id", "function"],
                    "properties": {
                        "id": {"type": "string", "minLength": 1, "maxLength": 256},
                        "type": {"const": "function"},
                        "function": {
                            "type": "object",
                            "required": ["name", "arguments"],
                            "properties": {
                                "name": {"type": "string"},
                                "arguments": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
            }
        ),
        "tool_call_id": {
            "type": "string",
            "description": "tool messages: the id of an earlier assistant tool call",
        },
        "refusal": {},
    },
    "additionalProperties": False,
    # `content` may be left out of assistant messages only.
    "if": {"properties": {"role": {"const": "assistant"}}},
    "else": {"required": ["content"]},
}

_STOP = {"type": "string", "minLength": 1, "maxLength": 256}
_TOOL_NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"}
_TOOLS: dict[str, Any] = {
    "tools": _nullable(
        {
            "type": "array",
            "maxItems": MAX_TOOLS,
            "description": "Function tools (names unique). A release may forbid tools "
            "(400 `tools_forbidden`) or allow only some.",
            "items": {
                "type": "object",
                "required": ["type", "function"],
                "properties": {
                    "type": {"const": "function"},
                    "function": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": _TOOL_NAME,
                            "description": {"type": "string"},
                            "parameters": {"type": "object"},
                            "strict": {"type": "boolean"},
                        },
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
        }
    ),
    "tool_choice": {
        "description": "none, auto, required, or a function named in `tools`",
        "anyOf": [
            {"enum": ["none", "auto", "required"]},
            {
                "type": "object",
                "required": ["type", "function"],
                "properties": {
                    "type": {"const": "function"},
                    "function": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
            {"type": "null"},
        ],
    },
    "parallel_tool_calls": _nullable({"type": "boolean"}),
}


def _extensions() -> dict[str, Any]:
    """The vLLM output extensions passed through (NOTES-19.md has the table), and logit bias."""
    out: dict[str, Any] = {name: _nullable({"type": "boolean"}) for name in sorted(FLAGS)}
    for name, (item, most) in LISTS.items():
        item_schema = (
            {"type": "integer", "minimum": 0}
            if item is int
            else {"type": "string", "minLength": 1, "maxLength": 256}
        )
        out[name] = _nullable({"type": "array", "maxItems": most, "items": item_schema})
    out["logit_bias"] = _nullable(
        {
            "type": "object",
            "maxProperties": MAX_LOGIT_BIAS,
            "propertyNames": {"pattern": "^[0-9]{1,9}$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        }
    )
    return out


CHAT_REQUEST: dict[str, Any] = {
    "title": "ChatCompletionRequest",
    "description": (
        "OpenAI's chat request, as far as the gateway passes it on. Unknown fields are a 400 "
        "`invalid_request`; fields that steer the engine ({}, ...) are a 400 "
        "`forbidden_parameter`.".format(", ".join(sorted(FORBIDDEN)[:6]))
    ),
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "one of your model aliases"},
        "messages": {
            "type": "array",
            "minItems": 1,
            "description": "At most the gateway's `max_messages` (256 by default).",
            "items": _MESSAGE,
        },
        "stream": _nullable({"type": "boolean"}),
        "stream_options": _nullable(
            {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
                "additionalProperties": False,
            }
        ),
        "max_tokens": _nullable({"type": "integer", "minimum": 1}),
        "max_completion_tokens": _nullable({"type": "integer", "minimum": 1}),
        **_sampling(),
        "stop": {
            "anyOf": [_STOP, {"type": "array", "maxItems": 4, "items": _STOP}, {"type": "null"}]
        },
        "user": _nullable({"type": "string", "maxLength": 256}),
        "logprobs": _nullable({"type": "boolean"}),
        "response_format": _nullable(
            {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}},
            }
        ),
        **_TOOLS,
        **_extensions(),
        **{
            name: {"description": "accepted and ignored"}
            for name in ("metadata", "store", "service_tier")
        },
    },
    "additionalProperties": False,
}

COMPLETION_REQUEST: dict[str, Any] = {
    "title": "CompletionRequest",
    "description": (
        "OpenAI's (legacy) completions request on a raw prompt. The release's prompt version "
        "puts its system prompt before the prompt, sends the prompt alone, or refuses raw prompts "
        "(400 `completions_forbidden`). Forbidden and unknown fields as for chat."
    ),
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": CHAT_REQUEST["properties"]["model"],
        "prompt": {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
                },
            ]
        },
        "stream": CHAT_REQUEST["properties"]["stream"],
        "stream_options": CHAT_REQUEST["properties"]["stream_options"],
        "max_tokens": CHAT_REQUEST["properties"]["max_tokens"],
        **_sampling(),
        "stop": CHAT_REQUEST["properties"]["stop"],
        "user": CHAT_REQUEST["properties"]["user"],
        "logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 5}),
        **_extensions(),
        **{
            name: {"description": "accepted and ignored"}
            for name in ("metadata", "store", "service_tier")
        },
    },
    "additionalProperties": False,
}

_HELLO = [{"role": "user", "content": "Hello!"}]
CHAT_EXAMPLES: dict[str, Any] = {
    "completion": {"summary": "One answer", "value": {"model": "chat", "messages": _HELLO}},
    "stream": {
        "summary": "Streamed, with the usage chunk",
        "value": {
            "model": "chat",
            "messages": _HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    },
}

STATUS_TEXT = {
    400: "Invalid request: not JSON, or a field is wrong (`param` names it)",
    401: "Missing or invalid credentials",
    403: "The caller's role may not do this, or the tenant is suspended",
    404: "Not found",
    409: "Conflict (stale `expected_revision`, or the record exists)",
    413: "Request body too large",
    422: "Invalid body, name or artifact",
    429: "Over a tenant limit",
    502: "The engine failed, refused the adapter, or broke the release's output schema",
    503: "No engine, registry or key backend available; retry",
}

# Statuses each operation can answer besides its success, beyond FastAPI's own 422.
CHAT_ERRORS = (400, 401, 403, 404, 413, 429, 502, 503)
MODELS_ERRORS = (401, 403, 503)
MODEL_ERRORS = (401, 403, 404, 503)
ADMIN_ERRORS = (401, 403, 503)  # every admin operation: the token, its role, the registry
ADMIN_EXTRA: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/admin/v1/tenants"): (409, 422),
    ("get", "/admin/v1/tenants"): (422,),  # limit and cursor out of range
    ("get", "/admin/v1/tenants/{tenant}"): (404, 422),
    ("patch", "/admin/v1/tenants/{tenant}"): (404, 422),
    ("post", "/admin/v1/tenants/{tenant}/keys"): (404, 422),
    ("delete", "/admin/v1/tenants/{tenant}/keys/{key_id}"): (404, 422),
    ("post", "/admin/v1/tenants/{tenant}/adapters/{adapter}/versions"): (404, 422),
    ("post", "/admin/v1/tenants/{tenant}/prompts/{prompt}/versions"): (400, 404, 422),
    ("post", "/admin/v1/tenants/{tenant}/models/{alias}/releases"): (400, 404, 422, 502),
    ("get", "/admin/v1/tenants/{tenant}/models"): (404, 422),
    ("get", "/admin/v1/tenants/{tenant}/models/{alias}"): (404, 422),
    ("get", "/admin/v1/tenants/{tenant}/models/{alias}/canary"): (404, 422),
    ("post", "/admin/v1/tenants/{tenant}/models/{alias}/canary"): (404, 409, 422, 502),
    ("post", "/admin/v1/tenants/{tenant}/models/{alias}/promote"): (400, 404, 409, 422, 502, 503),
    ("post", "/admin/v1/tenants/{tenant}/models/{alias}/eval"): (400, 404, 422, 502),
    ("post", "/admin/v1/tenants/{tenant}/models/{alias}/rollback"): (404, 409, 422),
    ("put", "/admin/v1/tenants/{tenant}/models/{alias}/flags"): (404, 409, 422),
    ("get", "/admin/v1/audit"): (400, 404, 422),
    ("post", "/admin/v1/tenants/{tenant}/adapters/{adapter}/uploads"): (404, 413, 422),
    ("get", "/admin/v1/tenants/{tenant}/adapters"): (404, 422),
    ("get", "/admin/v1/tenants/{tenant}/prompts"): (404, 422),
    ("get", "/admin/v1/tenants/{tenant}/releases"): (404, 422),
    ("get", "/admin/v1/audit/export"): (400, 404, 422),
    ("post", "/admin/v1/principals"): (404, 409, 422),
    ("delete", "/admin/v1/principals/{name}"): (404, 422),
    ("post", "/admin/v1/tenants/{tenant}/suspend"): (404, 409, 422),
    ("post", "/admin/v1/tenants/{tenant}/resume"): (404, 409, 422),
}

DOCUMENTED_SCHEMAS = (
    ERROR_RESPONSE,
    CHAT_REQUEST,
    CHAT_COMPLETION,
    CHAT_COMPLETION_CHUNK,
    COMPLETION_REQUEST,
    TEXT_COMPLETION,
    MODEL,
    MODEL_LIST,
)
_RETRY_AFTER_STATUSES = frozenset(CODES[code][0] for code in RETRY_AFTER_CODES)


def install_openapi(app: FastAPI) -> None:
    """Serve `build_openapi(app)` (built once) as the app's OpenAPI document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for schema in DOCUMENTED_SCHEMAS:
        schemas[schema["title"]] = schema
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components["securitySchemes"] = SECURITY_SCHEMES
    paths: dict[str, dict[str, Any]] = doc.setdefault("paths", {})
    paths[CHAT_PATH] = {"post": chat_operation()}
    paths[COMPLETIONS_PATH] = {"post": completions_operation()}
    for path, item in paths.items():
        for method, operation in item.items():
            if path.startswith(ADMIN_PREFIX):
                _document_admin(method, path, operation)
            elif path == "/v1/models" and method == "get":
                _document_models(operation)
            elif path == MODEL_PATH and method == "get":
                _document_model(operation)
    return doc


def chat_operation() -> dict[str, Any]:
    return {
        "tags": ["openai"],
        "summary": "Create a chat completion",
        "description": (
            "OpenAI-compatible. `model` is one of the caller's aliases; the gateway picks the "
            "release (stable or canary), its adapter and system prompt. With `stream: true` the "
            "answer is server-sent events ending in `data: [DONE]`; a failure after the stream "
            "started ends it with one error event and no `[DONE]`."
        ),
        "operationId": "create_chat_completion",
        "security": [{TENANT_SCHEME: []}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF + "ChatCompletionRequest"},
                    "examples": CHAT_EXAMPLES,
                }
            },
        },
        "responses": {
            "200": {
                "description": "The completion (JSON), or its stream (`stream: true`)",
                "headers": _tenant_headers(200),
                "content": {
                    "application/json": {"schema": {"$ref": _REF + "ChatCompletion"}},
                    "text/event-stream": {"schema": SSE_EVENT},
                },
            },
            **_errors(CHAT_ERRORS, tenant=True),
        },
    }


def completions_operation() -> dict[str, Any]:
    return {
        "tags": ["openai"],
        "summary": "Create a text completion",
        "description": (
            "OpenAI-compatible completions on a raw prompt, through the same release, limits and "
            "metering as chat. With `stream: true` the answer is server-sent events ending in "
            "`data: [DONE]`."
        ),
        "operationId": "create_completion",
        "security": [{TENANT_SCHEME: []}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF + "CompletionRequest"},
                    "examples": {
                        "completion": {
                            "summary": "One completion",
                            "value": {"model": "chat", "prompt": "Once upon", "max_tokens": 8},
                        }
                    },
                }
            },
        },
        "responses": {
            "200": {
                "description": "The completion (JSON), or its stream (`stream: true`)",
                "headers": _tenant_headers(200),
                "content": {
                    "application/json": {"schema": {"$ref": _REF + "TextCompletion"}},
                    "text/event-stream": {"schema": TEXT_SSE_EVENT},
                },
            },
            **_errors(CHAT_ERRORS, tenant=True),
        },
    }


def _document_model(operation: dict[str, Any]) -> None:
    operation["security"] = [{TENANT_SCHEME: []}]
    for parameter in operation.get("parameters", []):
        if parameter.get("name") == "model":
            parameter["description"] = "one of your model aliases"
            parameter["example"] = "chat"
    operation["responses"] = {
        "200": {
            "description": "One of the caller's aliases (another tenant's answers as unknown)",
            "headers": _tenant_headers(200),
            "content": {"application/json": {"schema": {"$ref": _REF + "Model"}}},
        },
        **_errors(MODEL_ERRORS, tenant=True),
    }


def _document_models(operation: dict[str, Any]) -> None:
    operation["security"] = [{TENANT_SCHEME: []}]
    operation["responses"] = {
        "200": {
            "description": "The caller's model aliases",
            "headers": _tenant_headers(200),
            "content": {"application/json": {"schema": {"$ref": _REF + "ModelList"}}},
        },
        **_errors(MODELS_ERRORS, tenant=True),
    }


def _document_admin(method: str, path: str, operation: dict[str, Any]) -> None:
    operation["security"] = [{ADMIN_SCHEME: []}]
    extra = ADMIN_EXTRA.get((method, path), (422,))
    if "{tenant}" in path:
        extra = (*extra, 404)  # a tenant outside the caller's scope answers as an unknown one
    if "requestBody" in operation:
        extra = (*extra, 400)  # a body that is not JSON at all
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's HTTPValidationError; the envelope below replaces it
    responses.update(_errors((*ADMIN_ERRORS, *extra), tenant=False))
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "path":
            parameter["schema"] = {**parameter.get("schema", {}), "pattern": NAME_PATTERN}


def _tenant_headers(status: int) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "x-request-id": {"required": True, "schema": {"type": "string"}},
    }
    if status == 200:
        headers["x-loragate-release"] = {
            "description": "The release that served the request (chat completions only)",
            "schema": {"type": "string"},
        }
    return headers


def _errors(statuses: tuple[int, ...], *, tenant: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in sorted(set(statuses)):
        headers: dict[str, Any] = _tenant_headers(status) if tenant else {}
        if status in _RETRY_AFTER_STATUSES:
            headers["retry-after"] = {
                "required": True,
                "description": "Seconds to wait before retrying",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        response: dict[str, Any] = {
            "description": STATUS_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": _REF + "ErrorResponse"}}},
        }
        if headers:
            response["headers"] = headers
        out[str(status)] = response
    return out
