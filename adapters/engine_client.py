"""vLLM's LoRA admin routes over HTTP, with their quirks turned into idempotent operations.

The gateway owns the `aiohttp.ClientSession` (one pool per process); these functions only borrow it.
Engine failures become domain exceptions:

    connection refused, timeout, 502/503/504  -> EngineUnavailable (try another replica)
    any other refusal                         -> EngineLoadFailed (carries the engine's message)

vLLM answers 400 "... has already been loaded" for a name it already holds and 404 on unloading an
unknown name; both mean the desired state is reached, so they count as success. A 404 with
`{"detail": "Not Found"}` is different: the route itself is missing because the engine runs without
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.

Example:
    async with aiohttp.ClientSession() as session:
        await load_adapter(session, "http://127.0.0.1:8001", "lg-acme-support-v1-0123", "/store/x")
        assert "lg-acme-support-v1-0123" in await list_adapters(session, "http://127.0.0.1:8001")
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from adapters.errors import EngineLoadFailed, EngineUnavailable

_UNAVAILABLE_STATUS = frozenset({502, 503, 504})
_ROUTE_MISSING = (
    "LoRA admin route missing: start the engine with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
)


def engine_headers(api_key: str) -> dict[str, str]:
    """Headers every engine call carries: vLLM started with `--api-key` (or VLLM_API_KEY) refuses
    /v1/* without them. The gateway sets them once, on the session its engine calls share."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _message(status: int, body: str) -> str:
    """The engine's own error message, from vLLM's nested envelope or FastAPI's `detail`."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return body.strip()[:500] or f"HTTP {status}"
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:500]
        if isinstance(doc.get("message"), str):
            return str(doc["message"])[:500]
        if isinstance(doc.get("detail"), str):
            return str(doc["detail"])[:500]
    return body.strip()[:500] or f"HTTP {status}"


def _is_route_missing(status: int, body: str) -> bool:
    if status != 404:
        return False
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("detail") == "Not Found"


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    timeout: float,  # noqa: ASYNC109
) -> tuple[int, str]:
    try:
        async with session.post(
            url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EngineUnavailable(f"engine unreachable at {url}: {type(exc).__name__}") from exc


async def load_adapter(
    session: aiohttp.ClientSession,
    engine_url: str,
    engine_name: str,
    lora_path: str,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 (an aiohttp per-request bound)
) -> None:
    """Make `engine_name` resident on the engine; calling it again for the same name is a no-op.

    Never reuse an engine name for different weights: vLLM would keep the old ones.
    """
    url = engine_url.rstrip("/") + "/v1/load_lora_adapter"
    status, body = await _post(
        session, url, {"lora_name": engine_name, "lora_path": lora_path}, timeout
    )
    if status == 200:
        return
    message = _message(status, body)
    if status == 400 and "already been loaded" in message:
        return
    if status in _UNAVAILABLE_STATUS:
        raise EngineUnavailable(f"engine busy or down ({status}): {message}")
    if _is_route_missing(status, body):
        raise EngineLoadFailed(_ROUTE_MISSING)
    raise EngineLoadFailed(f"engine refused to load {engine_name} ({status}): {message}")


async def unload_adapter(
    session: aiohttp.ClientSession,
    engine_url: str,
    engine_name: str,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 (an aiohttp per-request bound)
) -> None:
    """Drop `engine_name` from the engine; an unknown name is already the desired state."""
    url = engine_url.rstrip("/") + "/v1/unload_lora_adapter"
    status, body = await _post(session, url, {"lora_name": engine_name}, timeout)
    if status == 200:
        return
    if _is_route_missing(status, body):
        raise EngineLoadFailed(_ROUTE_MISSING)
    if status == 404:
        return
    message = _message(status, body)
    if status in _UNAVAILABLE_STATUS:
        raise EngineUnavailable(f"engine busy or down ({status}): {message}")
    raise EngineLoadFailed(f"engine refused to unload {engine_name} ({status}): {message}")


async def list_adapters(
    session: aiohttp.ClientSession,
    engine_url: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> set[str]:
    """Names of the LoRA adapters the engine holds (entries of GET /v1/models with a parent)."""
    url = engine_url.rstrip("/") + "/v1/models"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            status, body = resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EngineUnavailable(f"engine unreachable at {url}: {type(exc).__name__}") from exc
    if status == 401:
        raise EngineUnavailable(
            "engine refused GET /v1/models (401): LORAGATE_ENGINE_API_KEY must be the engines' "
            "--api-key"
        )
    if status != 200:
        raise EngineUnavailable(f"engine answered {status} to GET /v1/models")
    try:
        doc: Any = json.loads(body)
        entries = doc["data"]
        return {
            str(e["id"]) for e in entries if isinstance(e, dict) and e.get("parent") is not None
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineUnavailable("engine answered GET /v1/models with an unexpected body") from exc


async def check_health(
    session: aiohttp.ClientSession,
    engine_url: str,
    *,
    timeout: float = 2.0,  # noqa: ASYNC109
) -> bool:
    """True only for a 200 from GET /health within `timeout`; never raises on engine trouble."""
    return await probe_health(session, engine_url, timeout=timeout) == "ok"


async def probe_health(
    session: aiohttp.ClientSession,
    engine_url: str,
    *,
    timeout: float = 2.0,  # noqa: ASYNC109
) -> str:
    """`ok` (200), `down` (an answer other than 200, or nothing listening) or `slow` (no answer
    within `timeout`: a busy engine, not necessarily a dead one). Never raises."""
    url = engine_url.rstrip("/") + "/health"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            await resp.read()
            return "ok" if resp.status == 200 else "down"
    except aiohttp.ClientConnectorError:
        return "down"
    except (aiohttp.ClientError, TimeoutError):
        return "slow"


async def read_metrics(
    session: aiohttp.ClientSession,
    engine_url: str,
    *,
    timeout: float = 2.0,  # noqa: ASYNC109
) -> str:
    """The engine's Prometheus text (GET /metrics); EngineUnavailable on anything but a 200."""
    url = engine_url.rstrip("/") + "/metrics"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            status, body = resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EngineUnavailable(f"engine unreachable at {url}: {type(exc).__name__}") from exc
    if status != 200:
        raise EngineUnavailable(f"engine answered {status} to GET /metrics")
    return body
