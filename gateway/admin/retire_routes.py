"""Admin routes that retire what is no longer wanted (registry/lifecycle.py has the rules):

    POST /admin/v1/tenants/{tenant}/adapters/{adapter}/versions/{version}/retire
    POST /admin/v1/tenants/{tenant}/prompts/{prompt}/versions/{version}/retire
    POST /admin/v1/tenants/{tenant}/releases/{release}/retire

Each answers the retired record (`retired_at` set; retiring twice answers the same record), or
409 `in_use` naming the releases and aliases that still use it. A retired version cannot be named
by a new release, a retired release cannot become a canary or stable (409 `retired`). Nothing is
deleted: the listings show retired records, the audit has an entry for each retire. Engines drop
a retired adapter once no release an alias routes or rolls back to uses it for the unload grace
(`EnginePool.sweep`), which retiring guarantees.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from gateway.admin.routes import ActorDep, StateDep, _name
from gateway.admin.schemas import AdapterVersionPublic, PromptVersionPublic, ReleasePublic
from gateway.errors import ApiError
from registry.refs import RELEASE_ID_RE

router = APIRouter(prefix="/admin/v1", tags=["admin"])
Version = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.post("/tenants/{tenant}/adapters/{adapter}/versions/{version}/retire")
async def retire_adapter_version(
    tenant: str, adapter: str, version: Version, state: StateDep, actor: ActorDep
) -> AdapterVersionPublic:
    record = await state.store.retire_adapter_version(
        _name(tenant, "tenant id"), _name(adapter, "adapter name"), version, actor=actor
    )
    await state.watcher.refresh()
    return AdapterVersionPublic(**record.model_dump())


@router.post("/tenants/{tenant}/prompts/{prompt}/versions/{version}/retire")
async def retire_prompt_version(
    tenant: str, prompt: str, version: Version, state: StateDep, actor: ActorDep
) -> PromptVersionPublic:
    record = await state.store.retire_prompt_version(
        _name(tenant, "tenant id"), _name(prompt, "prompt name"), version, actor=actor
    )
    await state.watcher.refresh()
    return PromptVersionPublic(**record.model_dump())


@router.post("/tenants/{tenant}/releases/{release}/retire")
async def retire_release(
    tenant: str, release: str, state: StateDep, actor: ActorDep
) -> ReleasePublic:
    if RELEASE_ID_RE.fullmatch(release) is None:
        raise ApiError("invalid_name", "Invalid release id: expected <alias>-r<n>.")
    record = await state.store.retire_release(_name(tenant, "tenant id"), release, actor=actor)
    await state.watcher.refresh()
    return ReleasePublic(**record.model_dump(), release=record.id)
