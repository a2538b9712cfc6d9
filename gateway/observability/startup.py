"""What the gateway says at start: one line with where it listens, its engines, its Redis and its
version, then an error when the registry could not be read at start, and one per engine that is
not healthy once within `startup_grace_s` (a wrong URL, key or model name shows here, not as
503s minutes later). /readyz keeps giving the reasons while it runs.

    log_started(settings, version(), registry_ok=watcher.redis_ok)
    task = asyncio.create_task(watch_engines(pool.replicas, 60.0, 1.0))
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Protocol

from gateway.settings import Settings
from registry.redis_url import describe_url

log = logging.getLogger("loragate")


class _Replica(Protocol):
    name: str
    url: str
    healthy: bool


def version() -> str:
    try:
        return metadata.version("loragate")
    except metadata.PackageNotFoundError:
        return "unknown"


def log_started(settings: Settings, version: str, *, registry_ok: bool) -> None:
    redis = describe_url(settings.redis_url)
    fields = {
        "address": f"http://{settings.host}:{settings.port}",
        "version": version,
        "revision": settings.build_revision,
        "engines": list(settings.engines),
        "engine_api_key": bool(settings.engine_api_key.get_secret_value()),
        "base_model": settings.base_model,
        "base_adapter": settings.base_adapter,
        "redis": redis,
        "limits_redis": describe_url(settings.limits_redis_url or settings.redis_url),
        "redis_wait_replicas": settings.wait_replicas,
    }
    log.info("loragate started", extra={"fields": fields})
    if not settings.base_adapter:
        log.warning(
            "no base adapter (LORAGATE_BASE_ADAPTER unset): adapter-less releases and the kill "
            "switch run on the bare base model, which vLLM-CPU may batch with another tenant's LoRA"
        )
    if not registry_ok:
        log.error(
            "registry unreachable at start: serving nothing until it answers",
            extra={"fields": {"redis": redis}},
        )


async def watch_engines(replicas: Sequence[_Replica], grace_s: float, every_s: float) -> None:
    """Log once for each replica that has not been healthy once `grace_s` after start."""
    seen: set[str] = set()
    deadline = time.monotonic() + grace_s
    while len(seen) < len(replicas) and time.monotonic() < deadline:
        seen.update(r.name for r in replicas if r.healthy)
        await asyncio.sleep(every_s)
    seen.update(r.name for r in replicas if r.healthy)
    if len(seen) == len(replicas):
        log.info("every engine healthy", extra={"fields": {"engines": len(replicas)}})
    for replica in replicas:
        if replica.name not in seen:
            log.error(
                "engine never healthy since start",
                extra={"fields": {"engine": replica.name, "url": replica.url, "after_s": grace_s}},
            )
