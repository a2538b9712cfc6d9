"""The one error table at the HTTP edge.

Domain code raises domain exceptions (registry.errors, adapters.errors) or `ApiError`; this module
alone maps them to a status, an OpenAI-style error envelope and headers:

    {"error": {"message": str, "type": str, "param": str | null, "code": str}}

Messages never carry keys, prompts, engine adapter names or filesystem paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.errors import (
    ArtifactError,
    EngineLoadFailed,
    EngineUnavailable,
    PoolOverloaded,
    QueueLimited,
)
from registry.errors import (
    AlreadyExists,
    InUse,
    InvalidName,
    InvalidRollout,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    Retired,
    RevisionConflict,
)

# code -> (status, OpenAI error type)
CODES: dict[str, tuple[int, str]] = {
    "invalid_api_key": (401, "authentication_error"),
    "invalid_admin_token": (401, "authentication_error"),
    "forbidden": (403, "permission_error"),
    "tenant_suspended": (403, "permission_error"),
    "model_not_allowed": (403, "permission_error"),
    "model_not_found": (404, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    "invalid_request": (400, "invalid_request_error"),
    "forbidden_parameter": (400, "invalid_request_error"),
    "max_tokens_exceeds_limit": (400, "invalid_request_error"),
    "tools_forbidden": (400, "invalid_request_error"),
    "completions_forbidden": (400, "invalid_request_error"),
    "payload_too_large": (413, "invalid_request_error"),
    "headers_too_large": (431, "invalid_request_error"),
    "rate_limited": (429, "rate_limit_error"),
    "concurrency_limited": (429, "rate_limit_error"),
    "queue_limited": (429, "rate_limit_error"),
    "budget_exceeded": (429, "insufficient_quota"),
    "engine_unavailable": (503, "service_unavailable"),
    "auth_backend_unavailable": (503, "service_unavailable"),
    "overloaded": (503, "service_unavailable"),
    "registry_unavailable": (503, "service_unavailable"),
    "engine_error": (502, "api_error"),
    "adapter_load_failed": (502, "api_error"),
    "schema_violation": (502, "api_error"),
    "revision_conflict": (409, "conflict_error"),
    "already_exists": (409, "conflict_error"),
    "in_use": (409, "conflict_error"),
    "retired": (409, "conflict_error"),
    "invalid_name": (422, "invalid_request_error"),
    "invalid_rollout": (422, "invalid_request_error"),
    "eval_failed": (422, "invalid_request_error"),
    "artifact_outside_store": (422, "invalid_request_error"),
    "unsafe_artifact_format": (422, "invalid_request_error"),
    "artifact_invalid": (422, "invalid_request_error"),
    "adapter_incompatible": (422, "invalid_request_error"),
    "digest_mismatch": (422, "invalid_request_error"),
    "validation_error": (422, "invalid_request_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "internal_error": (500, "api_error"),
}


def status_of(code: str) -> int:
    """The HTTP status of an error code; codes outside the table are 500s."""
    return CODES.get(code, (500, "api_error"))[0]


RETRY_AFTER_CODES = {
    "rate_limited": 1,
    "concurrency_limited": 1,
    "queue_limited": 1,
    "budget_exceeded": 3600,
    "engine_unavailable": 2,
    "auth_backend_unavailable": 2,
    "overloaded": 1,
    "registry_unavailable": 2,
}


@dataclass
class ApiError(Exception):
    code: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None

    def __post_init__(self) -> None:
        # `param` (and some messages) echo client input, e.g. an unknown admin field's name; the
        # stdlib JSON parser lets lone surrogates through, which orjson cannot encode.
        self.message = _encodable(self.message)
        if self.param is not None:
            self.param = _encodable(self.param)

    @property
    def status(self) -> int:
        return status_of(self.code)

    @property
    def type(self) -> str:
        return CODES.get(self.code, (500, "api_error"))[1]

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response_headers(self, extra_headers: dict[str, str] | None = None) -> dict[str, str]:
        """The error's headers with `retry-after` in whole seconds where the code asks for one."""
        headers = dict(self.headers)
        if extra_headers:
            headers.update(extra_headers)
        retry = self.retry_after
        if retry is None and self.code in RETRY_AFTER_CODES:
            retry = RETRY_AFTER_CODES[self.code]
        if retry is not None:
            headers["retry-after"] = str(max(1, int(retry + 0.999)))
        return headers


def model_not_found(alias: str) -> ApiError:
    """Unknown and foreign aliases must be byte-identical: the message names only what was sent."""
    return ApiError(
        "model_not_found",
        f"The model `{_clip(alias)}` does not exist or you do not have access to it.",
        param="model",
    )


def _encodable(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _clip(text: str, limit: int = 64) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


def from_domain(exc: Exception) -> ApiError:
    """Map a domain exception to its API error; anything unknown is a 500 without details."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ArtifactError):
        return ApiError(exc.code if exc.code in CODES else "artifact_invalid", exc.message)
    if isinstance(exc, QueueLimited):
        return ApiError(
            "queue_limited",
            "Too many of this tenant's requests are waiting for an engine; retry shortly.",
        )
    if isinstance(exc, PoolOverloaded):
        return ApiError("overloaded", "The gateway is at capacity; retry shortly.")
    if isinstance(exc, EngineUnavailable):
        return ApiError("engine_unavailable", "No engine replica is available; retry shortly.")
    if isinstance(exc, EngineLoadFailed):
        return ApiError("adapter_load_failed", "The engine could not load the adapter.")
    if isinstance(exc, RegistryUnavailable):
        return ApiError("registry_unavailable", "The registry is unavailable; retry shortly.")
    if isinstance(
        exc,
        (
            NotFound,
            RevisionConflict,
            AlreadyExists,
            InvalidName,
            InvalidRollout,
            InUse,
            Retired,
        ),
    ):
        return ApiError(exc.code, exc.message)
    if isinstance(exc, RegistryError):
        return ApiError("invalid_request", exc.message)
    return ApiError("internal_error", "Internal error.")
