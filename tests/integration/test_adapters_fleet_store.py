"""Two gateways that share Redis, one engine (the fake: it records load paths and unloads) and a
real S3 protocol server (moto), but no adapter volume: each has its own adapter store.

- An adapter pushed through gateway A is served through gateway B, which never saw its files: the
  engine is told to load it from its own cache path `sha256/<hex>` (its plugin fetches and checks
  it there, tests/e2e/test_adapters_objectstore_e2e.py), and B's store stays empty.
- Retiring through the typed client: 409 in_use while an alias uses it, then retired on both
  gateways, refused for new use; the engine unloads the retired adapter after the unload grace
  and not before (the sweep is driven with explicit clock readings: no sleeps).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.artifact import compute_digest
from adapters.objectstore import digest_hex
from adapters.push import pack
from gateway.admin import client as api
from gateway.admin.client import AdminError
from gateway.engines.residency import referenced_engine_names
from tests.fixtures.inprocess import InProcessFactory, InProcessGateway
from tests.fixtures.models import TinyModels
from tests.fixtures.objectstore import S3Server

GRACE_S = 600.0


@dataclass
class Fleet:
    a: InProcessGateway
    b: InProcessGateway
    key: str
    engine_root: Path
    tmp: Path

    async def sync(self) -> None:
        await self.a.sync()
        await self.b.sync()


async def push(gw: InProcessGateway, source: Path, tmp: Path, name: str = "support") -> str:
    tar_path, _ = pack(source, tmp / f"{secrets.token_hex(4)}.tar")
    call = api.upload_adapter(
        "acme", name, [tar_path.read_bytes()], size=tar_path.stat().st_size,
        digest=compute_digest(source),
    )  # fmt: skip
    pushed = await gw.api.send(call)
    return pushed.ref


async def chat(gw: InProcessGateway, key: str) -> int:
    r = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers=gw.bearer(key),
    )
    return r.status_code


@pytest.fixture
async def fleet(
    inprocess_gateway: InProcessFactory,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Fleet:
    env = s3_server.env(s3_bucket)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, env[name])
    engine_root = tmp_path / "engine-cache"
    common = {
        "s3_bucket": s3_bucket, "s3_endpoint_url": s3_server.url,
        "engine_adapter_root": engine_root, "key_hmac_secret": secrets.token_hex(32),
        "adapter_unload_grace_s": GRACE_S, "adapter_sweep_interval_s": 3600.0,
    }  # fmt: skip
    a = await inprocess_gateway(adapter_store=tmp_path / "store-a", **common)
    b = await inprocess_gateway(
        adapter_store=tmp_path / "store-b", redis_url=a.settings.redis_url,
        engines=[a.engine.url], **common,
    )  # fmt: skip
    b.engine = a.engine
    await a.api.send(api.create_tenant("acme"))
    key = (await a.api.send(api.issue_key("acme"))).api_key
    return Fleet(a, b, key, engine_root, tmp_path)


def stored(gw: InProcessGateway) -> list[Path]:
    root = gw.settings.adapter_store / "sha256"
    return sorted(root.iterdir()) if root.exists() else []


async def test_pushed_through_one_gateway_served_through_another(
    fleet: Fleet, tiny_models: TinyModels
) -> None:
    source = tiny_models.adapter_dirs[0]
    ref = await push(fleet.a, source, fleet.tmp)
    digest = compute_digest(source)
    # B creates the release (and preloads the adapter on the engine) without the files.
    await fleet.b.api.send(api.create_release("acme", "chat", adapter=ref, prompt=None))
    await fleet.sync()
    assert await chat(fleet.b, fleet.key) == 200
    assert await chat(fleet.a, fleet.key) == 200
    engine_path = str(fleet.engine_root.resolve() / "sha256" / digest_hex(digest))
    # Every load (B's preload; A's, unless its probe saw B's first) names the engine's own path.
    assert set(fleet.a.engine.load_paths) == {engine_path}
    # Neither gateway keeps a copy: the object store holds it, the engine fetched it by digest.
    assert stored(fleet.a) == stored(fleet.b) == []


async def test_retired_adapter_is_unloaded_after_the_grace_on_every_gateway(
    fleet: Fleet, tiny_models: TinyModels
) -> None:
    a, b = fleet.a, fleet.b
    engine = a.engine
    v1 = await push(a, tiny_models.adapter_dirs[0], fleet.tmp)
    await a.api.send(api.create_release("acme", "chat", adapter=v1, prompt=None))
    v2 = await push(b, tiny_models.adapter_dirs[1], fleet.tmp)
    r2 = (await b.api.send(api.create_release("acme", "chat", adapter=v2, prompt=None))).id
    alias = await a.api.send(api.canary("acme", "chat", r2, 0.5, 1))
    await fleet.sync()
    names = {n for n in engine.loaded if n.startswith("lg-acme-support-")}
    assert len(names) == 2
    v2_name = next(n for n in names if "-v2-" in n)
    v1_name = next(n for n in names if "-v1-" in n)

    calls: list[api.AdminCall[Any]] = [
        api.retire_release("acme", r2), api.retire_adapter_version("acme", "support", 2),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(AdminError) as refused:
            await b.api.send(call)
        assert (refused.value.status, refused.value.code) == (409, "in_use")
        assert r2 in refused.value.message
    await a.api.send(api.rollback("acme", "chat", "bad canary", expected_revision=alias.revision))
    assert (await b.api.send(api.retire_release("acme", r2))).retired_at is not None
    retired = await a.api.send(api.retire_adapter_version("acme", "support", 2))
    assert retired.retired_at is not None
    listed = {v.version: v.retired_at for v in await b.api.send(api.list_adapter_versions("acme"))}
    assert listed == {1: None, 2: retired.retired_at}
    calls = [
        api.canary("acme", "chat", r2, 0.1, alias.revision + 1),
        api.create_release("acme", "chat", adapter=v2, prompt=None),
    ]
    for call in calls:
        with pytest.raises(AdminError) as refused:
            await a.api.send(call)
        assert (refused.value.status, refused.value.code) == (409, "retired")
    audit = [e.action for e in await a.api.send(api.audit("acme", 20))]
    assert {"retire_release", "retire_adapter_version"} <= set(audit)

    await fleet.sync()
    t0 = time.monotonic()
    for now in (t0, t0 + GRACE_S / 2, t0 + GRACE_S - 1):
        for gw in (a, b):
            referenced = referenced_engine_names(gw.state.watcher.state)
            assert v1_name in referenced
            assert v2_name not in referenced
            assert await gw.state.pool.sweep(referenced, now=now) == []
    assert v2_name in engine.loaded
    assert engine.unload_calls == []
    for gw in (a, b):  # every gateway reaches the same verdict; unloading twice is harmless
        await gw.state.pool.sweep(referenced_engine_names(gw.state.watcher.state), now=t0 + GRACE_S)
    assert set(engine.unload_calls) == {v2_name}
    assert engine.loaded >= {v1_name}
    assert v2_name not in engine.loaded
    assert await chat(b, fleet.key) == 200  # the stable release still serves
