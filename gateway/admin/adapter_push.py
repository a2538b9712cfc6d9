"""Admin routes for adapters from anywhere: push an artifact, and list what a tenant has.

    POST /admin/v1/tenants/{tenant}/adapters/{adapter}/uploads
         body: an uncompressed tar of the adapter files (adapters/push.py), streamed;
         header `X-Loragate-Digest: sha256:<hex>` (what the client computed)
      -> 201 the new version (as POST .../versions), plus `skipped` (trainer files left out)

The body goes to a file under `<adapter_store>/.incoming/` counted against the cap (413
`payload_too_large`), is unpacked and validated there, its digest recomputed and compared with
the client's (`digest_mismatch`), then either copied to the object store (when one is configured:
the engines fetch by digest, and the gateway keeps no copy) or renamed into
`<adapter_store>/sha256/<hex>` (content addressed: a second push of the same bytes reuses the
directory, nothing is overwritten), and only then recorded in the registry. A refused,
oversized or cut-off upload leaves no file and no registry entry. Versions are immutable: each push
is a new version number of the same content address. The answer's `server-timing` header splits
the time: `receive` (the body to disk), `validate` (unpack, checks, digest), `objectstore` (the
copy to S3), `registry` (the version record), in milliseconds.

    GET /admin/v1/tenants/{tenant}/adapters   versions, with the releases and aliases using them
    GET /admin/v1/tenants/{tenant}/prompts    the same for prompt versions
    GET /admin/v1/tenants/{tenant}/releases   releases, with the aliases (and arms) using them
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from adapters.artifact import ArtifactInfo, check_directory, check_listing, verify_digest
from adapters.errors import ArtifactError
from adapters.objectstore import S3Store, digest_hex, digest_relpath
from adapters.push import unpack
from gateway.admin.routes import ActorDep, StateDep, _name
from gateway.admin.schemas import (
    AdapterPushPublic,
    AdapterVersionListedPublic,
    PromptVersionListedPublic,
    ReleaseListedPublic,
)
from gateway.errors import ApiError
from gateway.settings import Settings

TAR_OVERHEAD = 64 * 1024  # tar headers and end-of-archive blocks around the capped file bytes
DIGEST_HEADER = "x-loragate-digest"

router = APIRouter(prefix="/admin/v1", tags=["admin"])


def object_store(request: Request, settings: Settings) -> S3Store | None:
    """One client per app (boto3 clients are thread-safe); None without LORAGATE_S3_BUCKET."""
    config = settings.object_store()
    if config is None:
        return None
    store: S3Store | None = getattr(request.app.state, "lg_object_store", None)
    if store is None:
        store = S3Store(config)
        request.app.state.lg_object_store = store
    return store


def close_object_store(app: Any) -> None:
    store: S3Store | None = getattr(app.state, "lg_object_store", None)
    if store is not None:
        store.close()
        app.state.lg_object_store = None


async def _receive(request: Request, path: Path, cap: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise ApiError("payload_too_large", f"The upload is over the {cap}-byte cap.")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > cap:
                raise ApiError("payload_too_large", f"The upload is over the {cap}-byte cap.")
            out.write(chunk)


def _stage(
    settings: Settings, tar_path: Path, staging: Path, claimed: str, *, keep: bool
) -> tuple[ArtifactInfo, tuple[str, ...]]:
    """Blocking: unpack and validate the artifact, and with `keep` place it in the local store;
    returns it and the skipped names. Without `keep` (an object store holds artifacts) it stays
    in `staging` for the upload and is removed after it: the engines fetch by digest, so a
    gateway keeps no copy that would only fill its disk."""
    skipped = unpack(tar_path, staging, max_bytes=settings.max_adapter_bytes)
    relpath = digest_relpath(claimed)
    info = check_directory(
        staging,
        relpath,
        check_listing(staging),
        base_model=settings.base_model,
        max_rank=settings.max_lora_rank,
        supported_modules=settings.supported_target_modules,
        max_bytes=settings.max_adapter_bytes,
        base_model_aliases=settings.base_model_aliases,
    )
    if info.digest != claimed:
        raise ArtifactError(
            f"the upload's digest is {info.digest}, not the {claimed} it was sent with",
            code="digest_mismatch",
        )
    if not keep:
        return dataclasses.replace(info, path=staging), skipped
    final = settings.adapter_store / relpath
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(final)
    except OSError:
        # Already stored (same digest, so the same bytes): check it, never replace it.
        if not final.is_dir():
            raise
        verify_digest(final, claimed)
    return dataclasses.replace(info, path=final), skipped


@router.post("/tenants/{tenant}/adapters/{adapter}/uploads", status_code=201)
async def push_adapter(
    tenant: str, adapter: str, request: Request, response: Response, state: StateDep,
    actor: ActorDep,
) -> AdapterPushPublic:  # fmt: skip
    _name(tenant, "tenant id")
    _name(adapter, "adapter name")
    settings = state.settings
    claimed = request.headers.get(DIGEST_HEADER, "")
    try:
        digest_hex(claimed)
    except ArtifactError:
        raise ApiError(
            "digest_mismatch", f"Send the artifact's digest as {DIGEST_HEADER}: sha256:<hex>."
        ) from None
    await state.store.get_tenant(tenant)  # 404 before reading a byte of the body
    incoming = settings.adapter_store / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    tar_path, staging = incoming / f"{token}.tar", incoming / token
    marks = [("start", time.perf_counter())]
    try:
        await _receive(request, tar_path, settings.max_adapter_bytes + TAR_OVERHEAD)
        marks.append(("receive", time.perf_counter()))
        store = object_store(request, settings)
        info, skipped = await asyncio.to_thread(
            _stage, settings, tar_path, staging, claimed, keep=store is None
        )
        marks.append(("validate", time.perf_counter()))
        if store is not None:
            await asyncio.to_thread(store.put_artifact, info.digest, info.path)
        marks.append(("objectstore", time.perf_counter()))
    except ClientDisconnect:
        raise ApiError("invalid_request", "The upload was cut off.") from None
    except ArtifactError as exc:
        if exc.code == "payload_too_large":
            raise ApiError("payload_too_large", exc.message) from None
        raise
    finally:
        tar_path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    version = await state.store.register_adapter_version(
        tenant, adapter, info, metadata={"source": "push", "skipped": list(skipped)}, actor=actor
    )
    marks.append(("registry", time.perf_counter()))
    response.headers["server-timing"] = ", ".join(
        f"{name};dur={(t - marks[i][1]) * 1000:.1f}" for i, (name, t) in enumerate(marks[1:])
    )
    return AdapterPushPublic(**version.model_dump(), skipped=list(skipped))


async def _users(state: Any, tenant: str) -> dict[str, list[dict[str, Any]]]:
    """release id -> the aliases (and arm) that route to it now (read from Redis)."""
    users: dict[str, list[dict[str, Any]]] = {}
    for alias in await state.store.list_aliases(tenant):
        if alias.stable is not None:
            users.setdefault(alias.stable, []).append({"alias": alias.alias, "arm": "stable"})
        if alias.canary is not None:
            users.setdefault(alias.canary, []).append({"alias": alias.alias, "arm": "canary"})
    return users


@router.get("/tenants/{tenant}/releases")
async def list_releases(tenant: str, state: StateDep, actor: ActorDep) -> list[ReleaseListedPublic]:
    _name(tenant, "tenant id")
    await state.store.get_tenant(tenant)  # 404 for an unknown tenant
    users = await _users(state, tenant)
    rows = await state.store.list_releases(tenant)
    return [
        ReleaseListedPublic(**r.model_dump(), used_by=users.get(r.id, []))
        for r in sorted(rows, key=lambda r: (r.alias, r.created_at, r.id))
    ]


@router.get("/tenants/{tenant}/adapters")
async def list_adapter_versions(
    tenant: str, state: StateDep, actor: ActorDep
) -> list[AdapterVersionListedPublic]:
    _name(tenant, "tenant id")
    await state.store.get_tenant(tenant)
    records = await state.store.list_adapter_versions(tenant)
    used = await _used_by(state, tenant, "adapter")
    return [
        AdapterVersionListedPublic(**r.model_dump(), used_by=used.get(r.ref, []))
        for r in sorted(records, key=lambda r: (r.name, r.version))
    ]


@router.get("/tenants/{tenant}/prompts")
async def list_prompt_versions(
    tenant: str, state: StateDep, actor: ActorDep
) -> list[PromptVersionListedPublic]:
    _name(tenant, "tenant id")
    await state.store.get_tenant(tenant)
    records = await state.store.list_prompt_versions(tenant)
    used = await _used_by(state, tenant, "prompt")
    return [
        PromptVersionListedPublic(**r.model_dump(), ref=r.ref, used_by=used.get(r.ref, []))
        for r in sorted(records, key=lambda r: (r.name, r.version))
    ]


async def _used_by(state: Any, tenant: str, kind: str) -> dict[str, list[dict[str, Any]]]:
    """version ref -> the releases naming it, each with the aliases routing to it now."""
    users = await _users(state, tenant)
    used: dict[str, list[dict[str, Any]]] = {}
    for release in await state.store.list_releases(tenant):
        ref = release.adapter if kind == "adapter" else release.prompt
        if ref is not None:
            used.setdefault(ref, []).append(
                {"release": release.id, "aliases": users.get(release.id, [])}
            )
    return used
