"""Retiring versions and releases against a real redis-server: refused while in use (naming the
users), listed and audited after, never usable again, and atomic against concurrent writers on
three separate connections (three gateways)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from registry import rollout
from registry.errors import InUse, NotFound, Retired, RevisionConflict
from registry.store import RegistryStore
from tests.fixtures.redis import RedisServer
from tests.fixtures.registry import REGISTRY_SECRET
from tests.integration.test_registry_store import NOW, artifact, seeded


@pytest.fixture
async def stores(
    redis_server: RedisServer, registry_store: RegistryStore
) -> AsyncIterator[list[RegistryStore]]:
    """Three stores on three connections to the same (flushed) database: three gateways."""
    clients = [
        aioredis.Redis.from_url(redis_server.url, socket_timeout=5, socket_connect_timeout=5)
        for _ in range(3)
    ]
    try:
        yield [RegistryStore(c, REGISTRY_SECRET, timeout=5.0) for c in clients]
    finally:
        for client in clients:
            await client.aclose()


async def audit_actions(store: RegistryStore) -> list[str]:
    return [e["action"] for e in await store.audit("acme", count=1000)]


async def test_retire_is_refused_while_used_and_final_after(registry_store: RegistryStore) -> None:
    store = registry_store
    await seeded(store)  # support-r1 (adapter support@1, prompt support@1) is stable
    with pytest.raises(InUse) as used:
        await store.retire_adapter_version("acme", "support", 1, actor="op")
    assert "support-r1" in used.value.message
    assert "support (stable support-r1)" in used.value.message
    with pytest.raises(InUse, match="stable"):
        await store.retire_release("acme", "support-r1", actor="op")
    with pytest.raises(InUse):
        await store.retire_prompt_version("acme", "support", 1, actor="op")

    await store.register_adapter_version("acme", "support", artifact(2), actor="root")
    await store.create_release("acme", "support", adapter="support@2", actor="root")
    for action, change in (
        ("canary", lambda a: rollout.start_canary(a, "support-r2", 0.5, now=NOW)),
        ("promote", lambda a: rollout.promote(a, now=NOW)),
    ):
        await store.mutate_alias(
            "acme", "support", expected_revision=None, action=action, change=change, actor="op"
        )
    with pytest.raises(InUse, match="last_good"):  # the rollback target
        await store.retire_release("acme", "support-r1", actor="op")
    await store.mutate_alias(
        "acme", "support", expected_revision=None, action="rollback", actor="op",
        change=lambda a: rollout.rollback(a, "bad", now=NOW),
    )  # fmt: skip
    # support-r2 is used by no alias now; support@2 only by support-r2.
    with pytest.raises(InUse, match="support-r2"):
        await store.retire_adapter_version("acme", "support", 2, actor="op")
    retired = await store.retire_release("acme", "support-r2", actor="op")
    assert retired.retired_at is not None
    version = await store.retire_adapter_version("acme", "support", 2, actor="op")
    assert version.retired_at is not None
    before = await audit_actions(store)
    assert before[:2] == ["retire_adapter_version", "retire_release"]  # newest first
    # Idempotent: the same record again, no second audit entry.
    assert await store.retire_release("acme", "support-r2", actor="op") == retired
    assert await audit_actions(store) == before

    # Kept and listed as retired; never usable again.
    assert (await store.get_release("acme", "support-r2")).retired_at == retired.retired_at
    listed = {v.version: v.retired_at for v in await store.list_adapter_versions("acme")}
    assert listed[1] is None
    assert listed[2] == version.retired_at
    with pytest.raises(Retired):
        await store.create_release("acme", "support", adapter="support@2", actor="op")
    with pytest.raises(Retired):
        await store.mutate_alias(
            "acme", "support", expected_revision=None, action="canary", actor="op",
            change=lambda a: rollout.start_canary(a, "support-r2", 0.1, now=NOW),
        )  # fmt: skip
    with pytest.raises(NotFound):
        await store.retire_release("acme", "support-r9", actor="op")
    with pytest.raises(NotFound):
        await store.retire_adapter_version("acme", "support", 9, actor="op")


def outcome(result: Any) -> str:
    return type(result).__name__ if isinstance(result, BaseException) else "ok"


async def test_retire_version_races_new_releases_on_three_gateways(
    stores: list[RegistryStore],
) -> None:
    """One gateway retires a version while two others create releases naming it: either the
    retire wins and both creates are refused, or a release exists and the retire is refused."""
    a, b, c = stores
    await seeded(a)
    outcomes: set[tuple[str, ...]] = set()
    for n in range(2, 14):
        await a.register_adapter_version("acme", "support", artifact(n), actor="root")
        ref = f"support@{n}"
        results = await asyncio.gather(
            a.retire_adapter_version("acme", "support", n, actor="a"),
            b.create_release("acme", f"x{n}", adapter=ref, actor="b"),
            c.create_release("acme", f"y{n}", adapter=ref, actor="c"),
            return_exceptions=True,
        )
        kinds = tuple(outcome(r) for r in results)
        outcomes.add(kinds)
        assert all(k in ("ok", "InUse", "Retired") for k in kinds), results
        version = next(v for v in await a.list_adapter_versions("acme") if v.version == n)
        naming = [r for r in await a.list_releases("acme") if r.adapter == ref]
        if kinds[0] == "ok":
            assert kinds[1:] == ("Retired", "Retired")
            assert naming == []
            assert version.retired_at is not None
        else:
            assert kinds[0] == "InUse"
            assert "ok" in kinds[1:]
            assert naming
            assert version.retired_at is None
    assert outcomes  # every round held; which side won varies with scheduling


async def test_retire_release_races_canary_on_three_gateways(stores: list[RegistryStore]) -> None:
    a, b, c = stores
    await seeded(a)
    for n in range(2, 12):
        await a.create_release("acme", "support", prompt="support@1", actor="root")
        rid = f"support-r{n}"

        def canary(alias: Any, rid: str = rid) -> Any:
            return rollout.start_canary(alias, rid, 0.2, now=NOW)

        results = await asyncio.gather(
            a.retire_release("acme", rid, actor="a"),
            b.mutate_alias("acme", "support", expected_revision=None, action="canary",
                           change=canary, actor="b"),
            c.mutate_alias("acme", "support", expected_revision=None, action="canary",
                           change=canary, actor="c"),
            return_exceptions=True,
        )  # fmt: skip
        kinds = tuple(outcome(r) for r in results)
        assert all(k in ("ok", "InUse", "Retired", "RevisionConflict") for k in kinds), results
        alias = await a.get_alias("acme", "support")
        release = await a.get_release("acme", rid)
        if kinds[0] == "ok":
            assert "ok" not in kinds[1:]
            assert release.retired_at is not None
            assert alias.canary != rid
        else:
            assert kinds[0] == "InUse"
            assert "ok" in kinds[1:]
            assert release.retired_at is None
            assert alias.canary == rid
            await a.mutate_alias(
                "acme", "support", expected_revision=None, action="rollback", actor="a",
                change=lambda al: rollout.rollback(al, "next round", now=NOW),
            )  # fmt: skip
    with pytest.raises(RevisionConflict):  # a stale revision still loses, retired or not
        await a.mutate_alias(
            "acme", "support", expected_revision=0, action="canary", actor="a",
            change=lambda al: rollout.start_canary(al, "support-r1", 0.1, now=NOW),
        )  # fmt: skip
