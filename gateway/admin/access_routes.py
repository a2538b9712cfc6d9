"""Admin routes for who may do what: principals, a tenant's keys, suspension, HMAC secret ids,
and the audit as NDJSON (gateway/admin/roles.py says which role opens each).

    GET    /admin/v1/whoami                          the caller: audit name, role, tenants
    POST   /admin/v1/principals                      -> 201 with the token (shown once)
    GET    /admin/v1/principals
    DELETE /admin/v1/principals/{name}               revoke (the name stays taken)
    GET    /admin/v1/tenants/{tenant}/keys           id, name, prefix, created, expires, last use
    POST   /admin/v1/tenants/{tenant}/suspend        every key answers 403 `tenant_suspended`
    POST   /admin/v1/tenants/{tenant}/resume
    GET    /admin/v1/secrets                         HMAC secret ids, current, keys under each
    GET    /admin/v1/audit/export?after=<id>&count=N NDJSON, oldest first, from a position
"""

from __future__ import annotations

import re
import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Response

from gateway.admin.routes import ActorDep, CallerDep, StateDep, _name, audit_scope
from gateway.admin.schemas import (
    CallerPublic,
    KeyInfoPublic,
    PrincipalCreate,
    PrincipalCreatedPublic,
    PrincipalPublic,
    SecretPublic,
    TenantPublic,
)
from gateway.errors import ApiError
from registry.models import Principal

router = APIRouter(prefix="/admin/v1", tags=["admin"])
RETENTION_HEADER = "x-loragate-audit-retention"  # entries kept; older ones are trimmed
STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


def _public(p: Principal) -> PrincipalPublic:
    return PrincipalPublic.model_validate(p.model_dump(exclude={"token_hmac"}))


@router.get("/whoami")
async def whoami(caller: CallerDep) -> CallerPublic:
    tenants = None if caller.tenants is None else tuple(sorted(caller.tenants))
    return CallerPublic(name=caller.name, role=caller.role, tenants=tenants)


@router.post("/principals", status_code=201)
async def create_principal(
    body: PrincipalCreate, state: StateDep, actor: ActorDep
) -> PrincipalCreatedPublic:
    for tenant in body.tenants:
        _name(tenant, "tenant id")
    expires = None if body.expires_in_s is None else time.time() + body.expires_in_s
    record, token = await state.store.create_principal(
        _name(body.name, "principal name"), role=body.role, tenants=body.tenants,
        expires_at=expires, actor=actor,
    )  # fmt: skip
    return PrincipalCreatedPublic(**_public(record).model_dump(), token=token)


@router.get("/principals")
async def list_principals(state: StateDep, actor: ActorDep) -> list[PrincipalPublic]:
    return [_public(p) for p in await state.store.list_principals()]


@router.delete("/principals/{name}")
async def revoke_principal(name: str, state: StateDep, actor: ActorDep) -> PrincipalPublic:
    return _public(await state.store.revoke_principal(_name(name, "principal name"), actor=actor))


@router.get("/tenants/{tenant}/keys")
async def list_keys(tenant: str, state: StateDep, actor: ActorDep) -> list[KeyInfoPublic]:
    """A tenant's keys, revoked ones included, oldest first; never the key or its HMAC."""
    keys = await state.store.list_keys(_name(tenant, "tenant id"))
    if not keys:
        await state.store.get_tenant(tenant)  # an unknown tenant is a 404, not an empty list
    seen = await state.store.key_last_seen([k.key_hmac for k, _ in keys])
    return [
        KeyInfoPublic(
            key_id=k.key_id,
            tenant=k.tenant,
            name=label.name,
            prefix=label.prefix,
            created_at=k.created_at,
            expires_at=k.expires_at,
            last_used_at=seen[k.key_hmac] * 60.0 if k.key_hmac in seen else None,
            aliases=k.aliases,
            limits=k.limits,
            revoked=k.revoked,
            secret_id=k.secret_id,
        )
        for k, label in keys
    ]


@router.post("/tenants/{tenant}/suspend")
async def suspend_tenant(tenant: str, state: StateDep, actor: ActorDep) -> TenantPublic:
    record = await state.store.set_suspended(_name(tenant, "tenant id"), True, actor=actor)
    await state.watcher.refresh()
    return TenantPublic.model_validate(record.model_dump())


@router.post("/tenants/{tenant}/resume")
async def resume_tenant(tenant: str, state: StateDep, actor: ActorDep) -> TenantPublic:
    record = await state.store.set_suspended(_name(tenant, "tenant id"), False, actor=actor)
    await state.watcher.refresh()
    return TenantPublic.model_validate(record.model_dump())


@router.get("/secrets")
async def list_secrets(state: StateDep, actor: ActorDep) -> list[SecretPublic]:
    await state.watcher.refresh()  # keys issued a moment ago count too
    counts: dict[str, int] = {}
    for key in state.watcher.state.keys.values():
        if not key.revoked:
            counts[key.secret_id] = counts.get(key.secret_id, 0) + 1
    ids = list(state.key_secrets) or [""]
    return [SecretPublic(id=i, current=n == 0, keys=counts.get(i, 0)) for n, i in enumerate(ids)]


@router.get(
    "/audit/export",
    response_class=Response,
    responses={
        200: {
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "headers": {
                RETENTION_HEADER: {
                    "description": "Entries the log keeps (approximately); older ones are gone",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            },
        }
    },
)
async def audit_export(
    state: StateDep,
    caller: CallerDep,
    after: Annotated[str | None, Query(description="stream id; default: the oldest kept")] = None,
    count: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    tenant: Annotated[str | None, Query()] = None,
) -> Response:
    """Audit entries after a position, oldest first, one JSON object per line with every field
    as stored (`prev` and `hash` chain each entry to the one before in the whole gateway's log;
    `loragate admin audit --verify` checks them). Page on with the last line's `id`. The log
    keeps about `x-loragate-audit-retention` entries (the store's `audit_maxlen`, 100,000);
    a SIEM that exports at least that often loses nothing."""
    if after is not None and not STREAM_ID.fullmatch(after):
        raise ApiError("invalid_request", "`after` is a stream id like 1700000000000-0.", "after")
    stream = audit_scope(caller, tenant)
    entries = await state.store.audit_since(after, count, stream)
    lines = [orjson.dumps({"id": entry_id, "fields": fields}) for entry_id, fields in entries]
    return Response(
        b"".join(line + b"\n" for line in lines),
        media_type="application/x-ndjson",
        headers={RETENTION_HEADER: str(state.store.audit_retention)},
    )
