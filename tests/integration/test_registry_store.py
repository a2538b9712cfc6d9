"""RegistryStore against a real redis-server: lifecycle, atomic rejections, audit hygiene."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from adapters.artifact import ArtifactInfo
from registry import rollout
from registry.compact import key_rec
from registry.errors import (
    AlreadyExists,
    InvalidName,
    InvalidRollout,
    NotFound,
    RevisionConflict,
)
from registry.models import Limits
from registry.secrets import hash_key
from registry.store import RegistryStore
from tests.fixtures.registry import REGISTRY_SECRET, dump_keyspace

NOW = 1_700_000_000.0


def artifact(n: int = 1) -> ArtifactInfo:
    return ArtifactInfo(
        path=Path(f"/store/acme/a{n}"), relpath=f"acme/a{n}", digest="sha256:" + f"{n:x}" * 64,
        base_model="tiny", rank=8, alpha=16.0, target_modules=("q_proj", "v_proj"),
        size_bytes=1234,
    )  # fmt: skip


async def seeded(store: RegistryStore) -> None:
    """acme with adapter support@1, prompt support@1 and alias support -> support-r1."""
    await store.create_tenant("acme", display_name="Acme", actor="root")
    await store.register_adapter_version("acme", "support", artifact(), actor="root")
    await store.register_prompt_version(
        "acme", "support", system_prompt="You are Acme's bot.", actor="root"
    )
    await store.create_release(
        "acme", "support", adapter="support@1", prompt="support@1", actor="root"
    )


async def test_lifecycle_versions_releases_and_rollout(registry_store: RegistryStore) -> None:
    store = registry_store
    await seeded(store)
    v2 = await store.register_adapter_version("acme", "support", artifact(2), actor="root")
    assert v2.version == 2
    assert v2.alpha == 16.0
    p2 = await store.register_prompt_version(
        "acme", "support", system_prompt="Be brief.", params={"temperature": 0}, actor="root"
    )
    assert p2.version == 2
    alias = await store.get_alias("acme", "support")
    assert (alias.stable, alias.canary, alias.revision) == ("support-r1", None, 1)

    r2 = await store.create_release("acme", "support", adapter="support@2", prompt="support@2",
                                    eval={"score": 0.9}, actor="root")  # fmt: skip
    assert r2.id == "support-r2"
    assert await store.get_release("acme", "support-r2") == r2
    assert (await store.get_alias("acme", "support")).stable == "support-r1"

    canary = await store.mutate_alias(
        "acme", "support", expected_revision=1, action="canary", reason="try r2", actor="root",
        change=lambda a: rollout.start_canary(a, "support-r2", 0.25, now=NOW),
    )  # fmt: skip
    assert (canary.canary, canary.canary_weight, canary.revision) == ("support-r2", 0.25, 2)
    promoted = await store.mutate_alias(
        "acme", "support", expected_revision=2, action="promote", actor="root",
        change=lambda a: rollout.promote(a, now=NOW),
    )  # fmt: skip
    assert (promoted.stable, promoted.canary, promoted.last_good) == (
        "support-r2",
        None,
        ("support-r1",),
    )
    back = await store.mutate_alias(
        "acme", "support", expected_revision=None, action="rollback", reason="p95", actor="root",
        change=lambda a: rollout.rollback(a, "p95", now=NOW),
    )  # fmt: skip
    assert (back.stable, back.revision) == ("support-r1", 4)
    assert await store.get_alias("acme", "support") == back
    assert [a.alias for a in await store.list_aliases("acme")] == ["support"]
    assert [h.action for h in back.history] == ["create", "canary", "promote", "rollback"]


async def test_tenants_and_keys(registry_store: RegistryStore) -> None:
    store = registry_store
    t = await store.create_tenant("acme", limits=Limits(max_tokens=64), actor="root")
    assert t.limits.max_tokens == 64
    with pytest.raises(AlreadyExists):
        await store.create_tenant("acme", actor="root")
    updated = await store.update_tenant("acme", limits=Limits(requests_per_minute=5), actor="root")
    assert updated.limits == Limits(requests_per_minute=5)
    assert updated.display_name == ""
    assert await store.get_tenant("acme") == updated
    await store.create_tenant("beta", actor="root")
    assert [x.id for x in await store.list_tenants()] == ["acme", "beta"]

    record, api_key = await store.issue_key("acme", actor="root")
    assert api_key.startswith("lg-")
    assert len(api_key) == 46
    assert record.key_hmac == hash_key(REGISTRY_SECRET, api_key)
    state = await store.load_state()
    assert state.tenant_for_key(record.key_hmac) == key_rec(record)
    await store.revoke_key("acme", record.key_id, actor="root")
    await store.revoke_key("acme", record.key_id, actor="root")  # idempotent
    assert (await store.load_state()).tenant_for_key(record.key_hmac) is None
    with pytest.raises(NotFound):
        await store.revoke_key("beta", record.key_id, actor="root")
    with pytest.raises(NotFound):
        await store.issue_key("nobody", actor="root")


async def test_audit_records_every_write_and_never_a_key(
    registry_store: RegistryStore, redis_client: aioredis.Redis
) -> None:
    store = registry_store
    await seeded(store)
    record, api_key = await store.issue_key("acme", actor="root")
    await store.revoke_key("acme", record.key_id, actor="root")
    entries = await store.audit()
    assert [e["action"] for e in entries] == [
        "revoke_key", "issue_key", "create_release", "register_prompt_version",
        "register_adapter_version", "create_tenant",
    ]  # fmt: skip
    assert entries[2]["target"] == "support-r1"
    assert entries[2]["after"]["id"] == "support-r1"
    assert entries[4]["target"] == "support@1"
    assert entries[0]["before"] == {"key_id": record.key_id, "revoked": False}
    assert [e["epoch"] for e in entries] == [6, 5, 4, 3, 2, 1]
    assert all(e["actor"] == "root" and e["tenant"] == "acme" for e in entries)
    assert len(await store.audit("acme", count=2)) == 2
    raw = repr(await redis_client.xrange(store.keyspace.audit))
    assert api_key not in raw
    assert record.key_hmac not in raw
    assert api_key not in repr(await dump_keyspace(redis_client))


BAD_REQUESTS: list[tuple[str, Any, type[Exception]]] = [
    ("unknown adapter", lambda s: s.create_release("acme", "support", adapter="nope@1",
                                                   prompt=None, actor="r"), NotFound),
    ("unknown adapter version", lambda s: s.create_release("acme", "other", adapter="support@9",
                                                           actor="r"), NotFound),
    ("unknown prompt", lambda s: s.create_release("acme", "x", prompt="support@2", actor="r"),
     NotFound),
    ("bad ref", lambda s: s.create_release("acme", "x", prompt="support", actor="r"), InvalidName),
    ("unknown tenant release", lambda s: s.create_release("zed", "x", actor="r"), NotFound),
    ("unknown tenant adapter", lambda s: s.register_adapter_version("zed", "a", artifact(),
                                                                    actor="r"), NotFound),
    ("bad tenant name", lambda s: s.create_tenant("Bad Name", actor="r"), InvalidName),
    ("bad alias name", lambda s: s.create_release("acme", "x:y", actor="r"), InvalidName),
    ("reserved tenant name", lambda s: s.create_tenant("unknown", actor="r"), InvalidName),
    ("reserved alias name", lambda s: s.create_release("acme", "unknown", actor="r"), InvalidName),
    ("name with a newline", lambda s: s.create_tenant("acme2\n", actor="r"), InvalidName),
    ("bad adapter name", lambda s: s.register_prompt_version("acme", "../x", system_prompt="",
                                                             actor="r"), InvalidName),
    ("duplicate tenant", lambda s: s.create_tenant("acme", actor="r"), AlreadyExists),
    ("stale revision", lambda s: s.mutate_alias(
        "acme", "support", expected_revision=7, action="canary", actor="r",
        change=lambda a: rollout.set_flags(a, {"kill_switch": True}, now=NOW)), RevisionConflict),
    ("promote without canary", lambda s: s.mutate_alias(
        "acme", "support", expected_revision=1, action="promote", actor="r",
        change=lambda a: rollout.promote(a, now=NOW)), InvalidRollout),
    ("canary to unknown release", lambda s: s.mutate_alias(
        "acme", "support", expected_revision=1, action="canary", actor="r",
        change=lambda a: rollout.start_canary(a, "support-r5", 0.5, now=NOW)), InvalidRollout),
    ("weight out of range", lambda s: s.mutate_alias(
        "acme", "support", expected_revision=1, action="canary", actor="r",
        change=lambda a: rollout.start_canary(a, "support-r1", 1.5, now=NOW)), InvalidRollout),
    ("unknown alias", lambda s: s.mutate_alias(
        "acme", "nope", expected_revision=None, action="rollback", actor="r",
        change=lambda a: rollout.rollback(a, "x", now=NOW)), NotFound),
    ("unknown key", lambda s: s.revoke_key("acme", "deadbeef", actor="r"), NotFound),
]  # fmt: skip


@pytest.mark.parametrize(("case", "call", "error"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_rejected_request_writes_nothing(
    registry_store: RegistryStore,
    redis_client: aioredis.Redis,
    case: str,
    call: Any,
    error: type[Exception],
) -> None:
    await seeded(registry_store)
    before = await dump_keyspace(redis_client)
    with pytest.raises(error):
        await call(registry_store)
    assert await dump_keyspace(redis_client) == before, case


async def test_concurrent_writers_one_winner_per_revision(registry_store: RegistryStore) -> None:
    store = registry_store
    await seeded(store)
    await store.create_release("acme", "support", adapter="support@1", actor="root")
    writers = 24

    async def writer(i: int) -> tuple[int, str]:
        """Each writer retries on conflict with a fresh read, so every update must land once."""
        for _ in range(200):
            current = await store.get_alias("acme", "support")
            try:
                new = await store.mutate_alias(
                    "acme", "support", expected_revision=current.revision, action="set_weight",
                    reason=f"w{i}", actor=f"writer-{i}",
                    change=lambda a: rollout.start_canary(
                        a, "support-r2", i / 100, now=NOW, reason=f"w{i}"
                    ),
                )  # fmt: skip
            except RevisionConflict:
                continue
            return new.revision, f"w{i}"
        raise AssertionError("writer never won")

    first_round = await asyncio.gather(
        *(store.mutate_alias(
            "acme", "support", expected_revision=1, action="canary", actor=f"r{i}",
            change=lambda a: rollout.start_canary(a, "support-r2", 0.5, now=NOW),
        ) for i in range(writers)),
        return_exceptions=True,
    )  # fmt: skip
    winners = [r for r in first_round if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, RevisionConflict) for r in first_round if r not in winners)

    results = await asyncio.gather(*(writer(i) for i in range(writers)))
    revisions = sorted(rev for rev, _ in results)
    assert revisions == list(range(3, 3 + writers))  # one winner per revision, none lost
    final = await store.get_alias("acme", "support")
    assert final.revision == 2 + writers
    reasons = [h.reason for h in final.history if h.action == "canary" and h.reason]
    assert sorted(reasons) == sorted(f"w{i}" for i in range(writers))
    audit = await store.audit("acme", count=1000)
    assert (
        sum(1 for e in audit if e["target"] == "support" and e["reason"].startswith("w")) == writers
    )


async def test_tenant_pages_cover_every_tenant_once(registry_store: RegistryStore) -> None:
    """Past Redis's small-hash encoding (128 fields), HSCAN pages for real."""
    ids = {f"t{i:03d}" for i in range(300)}
    for t in sorted(ids):
        await registry_store.create_tenant(t, actor="root")
    seen: list[str] = []
    cursor, pages = 0, 0
    while True:
        page, cursor = await registry_store.page_tenants(cursor, limit=50)
        seen += [t.id for t in page]
        pages += 1
        assert pages < 100
        if cursor == 0:
            break
    assert pages > 1
    assert sorted(seen) == sorted(ids)  # every tenant, none twice


async def test_list_aliases_reads_only_that_tenant(registry_store: RegistryStore) -> None:
    for tenant in ("acme", "acme2", "beta"):
        await registry_store.create_tenant(tenant, actor="root")
        await registry_store.create_release(tenant, "chat", actor="root")
    await registry_store.create_release("acme", "other", actor="root")
    assert [a.alias for a in await registry_store.list_aliases("acme")] == ["chat", "other"]
    assert [a.tenant for a in await registry_store.list_aliases("acme2")] == ["acme2"]
