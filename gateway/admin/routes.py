"""Admin API (`/admin/v1`): tenants, keys, adapter and prompt versions, releases, aliases,
flags, audit.

Admin identities open it (never a tenant key): the bootstrap token, named principals, OIDC
tokens, each with a role and maybe a tenant scope (gateway/admin/auth.py, roles.py); the audit
records the caller's name. Request models reject unknown fields. Every alias mutation is a
compare-and-set on `expected_revision`; a rejected request writes nothing.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from adapters.errors import EngineError
from gateway.admin.auth import authorize, unknown_tenant
from gateway.admin.roles import Caller
from gateway.admin.schemas import (
    AdapterVersionCreate,
    AdapterVersionPublic,
    AliasPublic,
    AuditEntryPublic,
    CanaryBody,
    CanaryStatusPublic,
    EvalBody,
    EvalReportPublic,
    FlagsBody,
    KeyCreate,
    KeyPublic,
    PromoteBody,
    PromptVersionCreate,
    PromptVersionPublic,
    ReleaseCreate,
    ReleasePublic,
    RollbackBody,
    TenantCreate,
    TenantDetailPublic,
    TenantPatch,
    TenantPublic,
    UsagePublic,
)
from gateway.errors import ApiError
from gateway.rollout import status as rollout_status
from gateway.rollout.evaluation import evaluate_alias, gate_promotion
from gateway.state import AppState
from registry import rollout
from registry.models import Alias, Flags, is_name
from registry.refs import parse_ref


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.lg
    return state


async def require_admin(request: Request) -> str:
    """The caller's name for the audit log, once its role and tenant scope allow the route
    (gateway/admin/auth.py, gateway/admin/roles.py)."""
    caller = await authorize(request, app_state(request))
    return caller.name


StateDep = Annotated[AppState, Depends(app_state)]
ActorDep = Annotated[str, Depends(require_admin)]


def current_caller(request: Request, actor: ActorDep) -> Caller:
    """The caller `require_admin` authorized (for routes that filter by tenant scope)."""
    caller: Caller = request.state.lg_caller
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


def _name(value: str, what: str) -> str:
    if not is_name(value):
        rule = "use 1-48 of a-z, 0-9, '-', '_' ('unknown' is reserved)"
        raise ApiError("invalid_name", f"Invalid {what}: {rule}.")
    return value


router = APIRouter(prefix="/admin/v1", tags=["admin"])


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantCreate, state: StateDep, actor: ActorDep) -> TenantPublic:
    tenant = await state.store.create_tenant(
        _name(body.id, "tenant id"),
        display_name=body.display_name,
        plan=body.plan,
        limits=body.limits,
        weight=body.weight,
        priority=body.priority,
        actor=actor,
    )
    return TenantPublic.model_validate(tenant.model_dump())


@router.get("/tenants")
async def list_tenants(
    state: StateDep,
    caller: CallerDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> list[TenantPublic]:
    """One page (about `limit` tenants) of those the caller may see; `x-next-cursor` is the next
    page's `cursor` (0: done). A scoped caller's page may hold fewer than `limit`."""
    page, nxt = await state.store.page_tenants(cursor, limit)
    response.headers["x-next-cursor"] = str(nxt)
    return [TenantPublic.model_validate(t.model_dump()) for t in page if caller.sees(t.id)]


@router.get("/tenants/{tenant}")
async def get_tenant(tenant: str, state: StateDep, actor: ActorDep) -> TenantDetailPublic:
    record = await state.store.get_tenant(_name(tenant, "tenant id"))
    aliases = await state.store.list_aliases(tenant)
    usage = await state.limiter.usage(record)
    return TenantDetailPublic(
        **record.model_dump(),
        usage=UsagePublic.model_validate(usage),
        models=tuple(AliasPublic.of(a) for a in aliases),
    )


@router.patch("/tenants/{tenant}")
async def patch_tenant(
    tenant: str, body: TenantPatch, state: StateDep, actor: ActorDep
) -> TenantPublic:
    record = await state.store.update_tenant(
        _name(tenant, "tenant id"),
        limits=body.limits,
        display_name=body.display_name,
        scheduling=body.model_dump(include={"plan", "weight", "priority"}, exclude_none=True),
        actor=actor,
    )
    return TenantPublic.model_validate(record.model_dump())


@router.post("/tenants/{tenant}/keys", status_code=201)
async def issue_key(
    tenant: str, state: StateDep, actor: ActorDep, body: KeyCreate | None = None
) -> KeyPublic:
    """A new key under the current HMAC secret; optionally named, expiring, limited to some
    aliases, with its own limits on top of the tenant's."""
    body = body or KeyCreate()
    for alias in body.aliases:
        _name(alias, "alias")
    secret_id, secret = next(iter(state.key_secrets.items()), ("", state.hmac_secret))
    expires = None if body.expires_in_s is None else time.time() + body.expires_in_s
    record, api_key = await state.store.issue_key(
        _name(tenant, "tenant id"), actor=actor, name=body.name, expires_at=expires,
        aliases=tuple(body.aliases), limits=body.limits, secret=(secret_id, secret),
    )  # fmt: skip
    return KeyPublic(
        key_id=record.key_id, api_key=api_key, tenant=record.tenant, name=body.name,
        expires_at=record.expires_at, aliases=record.aliases,
    )  # fmt: skip


@router.delete("/tenants/{tenant}/keys/{key_id}", status_code=204)
async def revoke_key(tenant: str, key_id: str, state: StateDep, actor: ActorDep) -> Response:
    await state.store.revoke_key(_name(tenant, "tenant id"), _name(key_id, "key id"), actor=actor)
    return Response(status_code=204)


@router.post("/tenants/{tenant}/adapters/{adapter}/versions", status_code=201)
async def register_adapter(
    tenant: str, adapter: str, body: AdapterVersionCreate, state: StateDep, actor: ActorDep
) -> AdapterVersionPublic:
    _name(tenant, "tenant id")
    _name(adapter, "adapter name")
    info = state.settings.validate_artifact(body.path)
    version = await state.store.register_adapter_version(
        tenant, adapter, info, metadata=body.metadata, actor=actor
    )
    return AdapterVersionPublic(**version.model_dump())


@router.post("/tenants/{tenant}/prompts/{prompt}/versions", status_code=201)
async def register_prompt(
    tenant: str, prompt: str, body: PromptVersionCreate, state: StateDep, actor: ActorDep
) -> PromptVersionPublic:
    if body.response_schema is not None:
        _check_schema(body.response_schema)
    version = await state.store.register_prompt_version(
        _name(tenant, "tenant id"),
        _name(prompt, "prompt name"),
        system_prompt=body.system_prompt,
        params=body.params,
        response_schema=body.response_schema,
        refusal_patterns=body.refusal_patterns,
        tool_use=body.tool_use,
        allowed_tools=body.allowed_tools,
        completions=body.completions,
        actor=actor,
    )
    return PromptVersionPublic(**version.model_dump())


def _check_schema(schema: dict[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ApiError(
            "invalid_request", f"Invalid JSON schema: {exc.message}", "response_schema"
        ) from None


@router.post("/tenants/{tenant}/models/{alias}/releases", status_code=201)
async def create_release(
    tenant: str, alias: str, body: ReleaseCreate, state: StateDep, actor: ActorDep
) -> ReleasePublic:
    _name(tenant, "tenant id")
    _name(alias, "alias")
    if body.adapter is not None:
        await _preload(state, tenant, body.adapter)
    release = await state.store.create_release(
        tenant,
        alias,
        adapter=body.adapter,
        prompt=body.prompt,
        params=body.params,
        eval=body.eval,
        thresholds=body.thresholds,
        schema_violation=body.schema_violation,
        actor=actor,
    )
    await state.watcher.refresh()
    return ReleasePublic(**release.model_dump(), release=release.id)


async def _preload(state: AppState, tenant: str, adapter_ref: str) -> None:
    """Load a release's adapter on an engine before the release can take traffic."""
    name, version = parse_ref(adapter_ref)
    snapshot = state.watcher.state
    record = snapshot.adapters.get((tenant, name, version))
    if record is None:
        await state.watcher.refresh()
        record = state.watcher.state.adapters.get((tenant, name, version))
    if record is None:
        raise ApiError("not_found", f"Adapter {adapter_ref!r} of tenant {tenant!r} not found.")
    if not state.pool.any_available():
        return  # nothing to warm: the first request will load it (or fail with engine_unavailable)
    try:
        await state.pool.preload(record)
    except EngineError as exc:
        raise ApiError(
            "adapter_load_failed", f"The engine refused the adapter: {exc.code}."
        ) from None


@router.get("/tenants/{tenant}/models")
async def list_models(tenant: str, state: StateDep, actor: ActorDep) -> list[AliasPublic]:
    return [AliasPublic.of(a) for a in await state.store.list_aliases(_name(tenant, "tenant id"))]


@router.get("/tenants/{tenant}/models/{alias}")
async def get_model(tenant: str, alias: str, state: StateDep, actor: ActorDep) -> AliasPublic:
    record = await state.store.get_alias(_name(tenant, "tenant id"), _name(alias, "alias"))
    return AliasPublic.of(record)


async def _mutate(
    state: AppState,
    tenant: str,
    alias: str,
    expected: int | None,
    change: Any,
    action: str,
    reason: str,
    actor: str,
) -> AliasPublic:
    record = await state.store.mutate_alias(
        _name(tenant, "tenant id"),
        _name(alias, "alias"),
        expected_revision=expected,
        change=change,
        action=action,
        reason=reason,
        actor=actor,
    )
    await state.watcher.refresh()
    return AliasPublic.of(record)


@router.get("/tenants/{tenant}/models/{alias}/canary")
async def canary_status(
    tenant: str, alias: str, state: StateDep, actor: ActorDep
) -> CanaryStatusPublic:
    """The canary's fleet-wide numbers per arm, the guard's verdict and what would trip."""
    record = await state.store.get_alias(_name(tenant, "tenant id"), _name(alias, "alias"))
    return CanaryStatusPublic.model_validate(await rollout_status.canary_status(state, record))


async def _with_numbers(state: AppState, tenant: str, alias: str, reason: str) -> str:
    """A manual promote/rollback's audit reason, with the fleet's canary numbers at that time."""
    current = state.watcher.state.alias(_name(tenant, "tenant id"), _name(alias, "alias"))
    note = "" if current is None else await rollout_status.numbers_note(state, current)
    return f"{reason} ({note})" if reason and note else reason or note


@router.post("/tenants/{tenant}/models/{alias}/canary")
async def canary(
    tenant: str, alias: str, body: CanaryBody, state: StateDep, actor: ActorDep
) -> AliasPublic:
    release = await state.store.get_release(
        _name(tenant, "tenant id"), _name(body.release, "release")
    )
    if release.alias != alias:
        raise ApiError("invalid_rollout", "The release belongs to another model alias.")
    if release.adapter is not None and body.weight > 0:
        await _preload(state, tenant, release.adapter)
    now = time.time()

    def change(current: Alias) -> Alias:
        if current.canary == body.release:
            return rollout.set_weight(current, body.weight, now=now)
        return rollout.start_canary(current, body.release, body.weight, now=now, reason=body.reason)

    return await _mutate(
        state, tenant, alias, body.expected_revision, change, "canary", body.reason, actor
    )


@router.post("/tenants/{tenant}/models/{alias}/promote")
async def promote(
    tenant: str, alias: str, body: PromoteBody, state: StateDep, actor: ActorDep
) -> AliasPublic:
    await gate_promotion(  # 422 eval_failed with the failing cases, unless skip_eval
        state, _name(tenant, "tenant id"), _name(alias, "alias"),
        expected_revision=body.expected_revision, skip=body.skip_eval,
    )  # fmt: skip
    now = time.time()
    reason = await _with_numbers(state, tenant, alias, body.reason)
    return await _mutate(
        state,
        tenant,
        alias,
        body.expected_revision,
        lambda current: rollout.promote(current, now=now),
        "promote",
        reason,
        actor,
    )


@router.post("/tenants/{tenant}/models/{alias}/eval")
async def run_eval(
    tenant: str, alias: str, body: EvalBody, state: StateDep, actor: ActorDep
) -> EvalReportPublic:
    """Run a release's evaluation set now; per-case results (a failing eval is still a 200)."""
    release = None if body.release is None else _name(body.release, "release")
    report = await evaluate_alias(state, _name(tenant, "tenant id"), _name(alias, "alias"), release)
    return EvalReportPublic.model_validate(report.view())


@router.post("/tenants/{tenant}/models/{alias}/rollback")
async def rollback(
    tenant: str, alias: str, body: RollbackBody, state: StateDep, actor: ActorDep
) -> AliasPublic:
    now = time.time()
    reason = await _with_numbers(state, tenant, alias, body.reason)
    return await _mutate(
        state,
        tenant,
        alias,
        body.expected_revision,
        lambda current: rollout.rollback(current, body.reason, now=now),
        "rollback",
        reason,
        actor,
    )


@router.put("/tenants/{tenant}/models/{alias}/flags")
async def put_flags(
    tenant: str, alias: str, body: FlagsBody, state: StateDep, actor: ActorDep
) -> AliasPublic:
    now = time.time()

    def change(current: Alias) -> Alias:
        flags = current.flags.model_dump()
        if body.kill_switch is not None:
            flags["kill_switch"] = body.kill_switch
        if body.auto_rollback is not None:
            flags["auto_rollback"] = body.auto_rollback
        if body.priority is not None:
            flags["priority"] = body.priority
        return rollout.set_flags(current, Flags(**flags), now=now)

    return await _mutate(
        state, tenant, alias, body.expected_revision, change, "set_flags", body.reason, actor
    )


def audit_scope(caller: Caller, tenant: str | None) -> str | None:
    """The audit stream a caller reads: a scoped caller names one of its tenants (or has one);
    any other tenant answers as an unknown one."""
    if tenant is not None:
        _name(tenant, "tenant id")
        if not caller.sees(tenant):
            raise unknown_tenant(tenant)
        return tenant
    if caller.tenants is None:
        return None
    if len(caller.tenants) == 1:
        return next(iter(caller.tenants))
    raise ApiError("invalid_request", "Name the tenant whose audit to read.", "tenant")


@router.get("/audit")
async def audit(
    state: StateDep,
    caller: CallerDep,
    tenant: Annotated[str | None, Query()] = None,
    count: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[AuditEntryPublic]:
    """Newest first; the whole gateway's, or one tenant's (`tenant`)."""
    stream = audit_scope(caller, tenant)
    return [AuditEntryPublic.model_validate(e) for e in await state.store.audit(stream, count)]
