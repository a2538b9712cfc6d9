"""vLLM plugin: engines that share no volume with the gateway fetch adapters by digest.

Installed into the engine's environment with an entry point in the `vllm.general_plugins` group
(`loragate = "adapters.vllm_resolver:register"`); vLLM calls `register()` in each of its processes
and it acts only in the API server process. Configuration from the environment:

    LORAGATE_ENGINE_CACHE_DIR     the engine's own adapter directory (the gateway's
                                  `engine_adapter_root`); unset: the plugin does nothing
    LORAGATE_ENGINE_CACHE_BYTES   cache bound (default 8 GiB)
    LORAGATE_S3_*                 the object store (adapters/objectstore.py)

Two ways in, both ending in `DigestCache.ensure` (download, list, digest check on this node,
atomic rename, LRU bound):

  * the gateway's load: POST /v1/load_lora_adapter with `lora_path=<cache dir>/sha256/<hex>`;
    the plugin fills that directory before vLLM reads it (a wrapper around
    `OpenAIServingModels.load_lora_adapter`), and pins it until the matching unload;
  * vLLM's own resolver interface (`LoRAResolver.resolve_lora`), asked when a request names an
    adapter the engine does not hold (an engine restarted under the gateway): loragate's engine
    names end in the first 12 hex digits of the digest, looked up in the object store.

A fill that fails leaves the path absent, so vLLM answers its own "not found" (the gateway reports
engine_load_failed) and nothing is cached.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from pathlib import Path
from typing import Any

from adapters.cache import DigestCache
from adapters.errors import AdapterError
from adapters.objectstore import S3Config, S3Store

log = logging.getLogger("loragate.engine_plugin")
_ENGINE_NAME = re.compile(r"^lg-.+-v\d+-(?P<short>[0-9a-f]{12})$")
_state: dict[str, Any] = {}
_pins: dict[str, str] = {}  # engine adapter name -> the digest pinned for it


def build_cache(env: dict[str, str] | None = None) -> tuple[DigestCache, S3Store] | None:
    env = dict(os.environ) if env is None else env
    root = env.get("LORAGATE_ENGINE_CACHE_DIR")
    config = S3Config.from_env(env)
    if not root or config is None:
        return None
    store = S3Store(config)
    cache = DigestCache(
        Path(root),
        max_bytes=int(env.get("LORAGATE_ENGINE_CACHE_BYTES", str(8 * 2**30))),
        fetch=store.get_artifact,
    )
    return cache, store


def register() -> None:
    """The `vllm.general_plugins` entry point; idempotent, a no-op outside the API server."""
    if _state.get("registered"):
        return
    try:
        from vllm.entrypoints.openai.models.serving import OpenAIServingModels
        from vllm.lora.resolver import LoRAResolverRegistry
    except ImportError:  # an engine core or worker process of another layout: nothing to do
        return
    built = build_cache()
    if built is None:
        return
    cache, store = built
    _state.update(registered=True, cache=cache, store=store)
    LoRAResolverRegistry.register_resolver("loragate", _make_resolver(cache, store))
    _wrap_serving_models(OpenAIServingModels, cache)
    log.info("loragate adapter cache at %s", cache.root)


def _make_resolver(cache: DigestCache, store: S3Store) -> Any:
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    class LoragateResolver(LoRAResolver):  # type: ignore[misc]
        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            m = _ENGINE_NAME.fullmatch(lora_name)
            if m is None:
                return None
            digest = await asyncio.to_thread(store.find_digest, m["short"])
            if digest is None:
                return None
            try:
                path = await asyncio.to_thread(cache.ensure, digest, pin=lora_name not in _pins)
            except (AdapterError, OSError) as exc:
                log.warning("cannot fetch %s: %s", digest, exc)
                return None
            _pins.setdefault(lora_name, digest)
            return LoRARequest(lora_name=lora_name, lora_int_id=0, lora_path=str(path))

    return LoragateResolver()


def _wrap_serving_models(cls: Any, cache: DigestCache) -> None:
    load = cls.load_lora_adapter
    unload = cls.unload_lora_adapter

    @functools.wraps(load)
    async def load_lora_adapter(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        digest = cache.digest_of(Path(str(request.lora_path or "")))
        pinned_now = False
        if digest is not None:
            try:
                pin = request.lora_name not in _pins
                await asyncio.to_thread(cache.ensure, digest, pin=pin)
                if pin:
                    _pins[request.lora_name] = digest
                    pinned_now = True
            except (AdapterError, OSError) as exc:
                log.warning("cannot fetch %s: %s", digest, exc)
        result = await load(self, request, *args, **kwargs)
        if pinned_now and not isinstance(result, str):  # vLLM refused it: do not hold it
            _pins.pop(request.lora_name, None)
            cache.unpin(str(digest))
        return result

    @functools.wraps(unload)
    async def unload_lora_adapter(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        result = await unload(self, request, *args, **kwargs)
        digest = _pins.pop(request.lora_name, None)
        if digest is not None:
            cache.unpin(digest)
        return result

    cls.load_lora_adapter = load_lora_adapter
    cls.unload_lora_adapter = unload_lora_adapter
