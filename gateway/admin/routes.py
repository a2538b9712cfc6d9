"""Admin API (`/admin/v1`): tenants, keys, adapter and prompt versions, releases, aliases,
flags, audit.

Only the admin token opens it (never a tenant key). Request models reject unknown fields. Every
alias mutation is a compare-and-set on `expected_revision`; a rejected request writes nothing.
"""

from __future__ import annotations

import hmac
import math
import time
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.errors import EngineError
from gateway.errors import ApiError
from gateway.rollout import status as rollout_status
from gateway.rollout.evaluation import evaluate_alias, gate_promotion
from gateway.state import AppState
from registry import rollout
from registry.models import NAME_PATTERN, Alias, Flags, Limits, Thresholds, is_name
from registry.refs import parse_ref


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _storable(self) -> Self:
        """Refuse what the registry cannot store and read back (422, nothing written): Python's
        JSON parser accepts `NaN`, `1e400` (inf), integers of any size and lone surrogates;
        orjson cannot encode the last two (was a 500), and writes NaN/inf as null, which made
        a release or tenant record unreadable (and the snapshot with it)."""
        for name, value in self.model_dump().items():
            problem = unstorable(value)
            if problem is not None:
                raise ValueError(f"`{name}`: {problem}")
        return self


def unstorable(value: object) -> str | None:
    """Why `value` (parsed JSON) cannot round-trip through the registry's JSON, or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if -(2**63) <= value < 2**64 else "integers must fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite"
    if isinstance(value, str):
        return None if value.isascii() or _is_utf8(value) else "strings must be valid Unicode"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = unstorable(key) if isinstance(key, str) else "object keys must be strings"
            if problem is None:
                problem = unstorable(item)
            if problem is not None:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for item in value:
            problem = unstorable(item)
            if problem is not None:
                return problem
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _documented_name() -> Any:
    """The name rule in the schema only: `_name` checks it (422 `invalid_name`, not pydantic's)."""
    return Field(json_schema_extra={"pattern": NAME_PATTERN})


class TenantCreate(Body):
    id: str = _documented_name()
    display_name: str = ""
    plan: str = "default"
    limits: Limits | None = None


class TenantPatch(Body):
    display_name: str | None = None
    limits: Limits | None = None


class AdapterVersionCreate(Body):
    path: str = Field(min_length=1, max_length=255)
    metadata: dict[str, Any] = {}


class PromptVersionCreate(Body):
    system_prompt: str = Field(max_length=32_768)
    params: dict[str, Any] = {}
    response_schema: dict[str, Any] | None = None
    refusal_patterns: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50
    )


class ReleaseCreate(Body):
    adapter: str | None
    prompt: str | None
    params: dict[str, Any] = {}
    eval: dict[str, Any] | None = None
    thresholds: Thresholds | None = None
    schema_violation: Literal["pass", "reject"] = "pass"


class CanaryBody(Body):
    release: str = _documented_name()
    weight: float = Field(ge=0.0, le=1.0)
    expected_revision: int
    reason: str = ""


class PromoteBody(Body):
    expected_revision: int
    reason: str = ""
    skip_eval: bool = False


class RollbackBody(Body):
    expected_revision: int | None = None
    reason: str = Field(min_length=1, max_length=500)


class FlagsBody(Body):
    kill_switch: bool | None = None
    auto_rollback: bool | None = None
    expected_revision: int | None = None
    reason: str = ""


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.lg
    return state


def require_admin(request: Request) -> str:
    """The admin identity for the audit log; constant-time comparison of the token."""
    state = app_state(request)
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.startswith("Bearer ") else ""
    if (
        not token
        or not state.admin_token
        or not hmac.compare_digest(token.encode(), state.admin_token.encode())
    ):
        raise ApiError("invalid_admin_token", "Missing or invalid admin token.")
    return "admin"


StateDep = Annotated[AppState, Depends(app_state)]
ActorDep = Annotated[str, Depends(require_admin)]


def _name(value: str, what: str) -> str:
    if not is_name(value):
        rule = "use 1-48 of a-z, 0-9, '-', '_' ('unknown' is reserved)"
        raise ApiError("invalid_name", f"Invalid {what}: {rule}.")
    return value


def alias_view(alias: Alias) -> dict[str, Any]:
    return {
        "tenant": alias.tenant,
        "alias": alias.alias,
        "stable": alias.stable,
        "canary": alias.canary,
        "canary_weight": alias.canary_weight,
        "revision": alias.revision,
        "flags": alias.flags.model_dump(),
        "history": [h.model_dump() for h in alias.history],
    }


router = APIRouter(prefix="/admin/v1", tags=["admin"])


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantCreate, state: StateDep, actor: ActorDep) -> dict[str, Any]:
    tenant = await state.store.create_tenant(
        _name(body.id, "tenant id"),
        display_name=body.display_name,
        plan=body.plan,
        limits=body.limits,
        actor=actor,
    )
    return tenant.model_dump()


@router.get("/tenants")
async def list_tenants(state: StateDep, actor: ActorDep) -> list[dict[str, Any]]:
    return [t.model_dump() for t in await state.store.list_tenants()]


@router.get("/tenants/{tenant}")
async def get_tenant(tenant: str, state: StateDep, actor: ActorDep) -> dict[str, Any]:
    record = await state.store.get_tenant(_name(tenant, "tenant id"))
    aliases = await state.store.list_aliases(tenant)
    usage = await state.limiter.usage(record)
    return {**record.model_dump(), "usage": usage, "models": [alias_view(a) for a in aliases]}


@router.patch("/tenants/{tenant}")
async def patch_tenant(
    tenant: str, body: TenantPatch, state: StateDep, actor: ActorDep
) -> dict[str, Any]:
    record = await state.store.update_tenant(
        _name(tenant, "tenant id"), limits=body.limits, display_name=body.display_name, actor=actor
    )
    return record.model_dump()


@router.post("/tenants/{tenant}/keys", status_code=201)
async def issue_key(tenant: str, state: StateDep, actor: ActorDep) -> dict[str, Any]:
    record, api_key = await state.store.issue_key(_name(tenant, "tenant id"), actor=actor)
    return {"key_id": record.key_id, "api_key": api_key, "tenant": record.tenant}


@router.delete("/tenants/{tenant}/keys/{key_id}", status_code=204)
async def revoke_key(tenant: str, key_id: str, state: StateDep, actor: ActorDep) -> Response:
    await state.store.revoke_key(_name(tenant, "tenant id"), _name(key_id, "key id"), actor=actor)
    return Response(status_code=204)


@router.post("/tenants/{tenant}/adapters/{adapter}/versions", status_code=201)
async def register_adapter(
    tenant: str, adapter: str, body: AdapterVersionCreate, state: StateDep, actor: ActorDep
) -> dict[str, Any]:
    _name(tenant, "tenant id")
    _name(adapter, "adapter name")
    info = state.settings.validate_artifact(body.path)
    version = await state.store.register_adapter_version(
        tenant, adapter, info, metadata=body.metadata, actor=actor
    )
    return {**version.model_dump(), "ref": version.ref}


@router.post("/tenants/{tenant}/prompts/{prompt}/versions", status_code=201)
async def register_prompt(
    tenant: str, prompt: str, body: PromptVersionCreate, state: StateDep, actor: ActorDep
) -> dict[str, Any]:
    if body.response_schema is not None:
        _check_schema(body.response_schema)
    version = await state.store.register_prompt_version(
        _name(tenant, "tenant id"),
        _name(prompt, "prompt name"),
        system_prompt=body.system_prompt,
        params=body.params,
        response_schema=body.response_schema,
        refusal_patterns=body.refusal_patterns,
        actor=actor,
    )
    return {**version.model_dump(), "ref": version.ref}


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
) -> dict[str, Any]:
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
    return {"release": release.id, **release.model_dump()}


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
async def list_models(tenant: str, state: StateDep, actor: ActorDep) -> list[dict[str, Any]]:
    return [alias_view(a) for a in await state.store.list_aliases(_name(tenant, "tenant id"))]


@router.get("/tenants/{tenant}/models/{alias}")
async def get_model(tenant: str, alias: str, state: StateDep, actor: ActorDep) -> dict[str, Any]:
    record = await state.store.get_alias(_name(tenant, "tenant id"), _name(alias, "alias"))
    return alias_view(record)


async def _mutate(
    state: AppState,
    tenant: str,
    alias: str,
    expected: int | None,
    change: Any,
    action: str,
    reason: str,
    actor: str,
) -> dict[str, Any]:
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
    return alias_view(record)


@router.get("/tenants/{tenant}/models/{alias}/canary")
async def canary_status(
    tenant: str, alias: str, state: StateDep, actor: ActorDep
) -> dict[str, Any]:
    """The canary's fleet-wide numbers per arm, the guard's verdict and what would trip."""
    record = await state.store.get_alias(_name(tenant, "tenant id"), _name(alias, "alias"))
    return await rollout_status.canary_status(state, record)


async def _with_numbers(state: AppState, tenant: str, alias: str, reason: str) -> str:
    """A manual promote/rollback's audit reason, with the fleet's canary numbers at that time."""
    current = state.watcher.state.alias(_name(tenant, "tenant id"), _name(alias, "alias"))
    note = "" if current is None else await rollout_status.numbers_note(state, current)
    return f"{reason} ({note})" if reason and note else reason or note


@router.post("/tenants/{tenant}/models/{alias}/canary")
async def canary(
    tenant: str, alias: str, body: CanaryBody, state: StateDep, actor: ActorDep
) -> dict[str, Any]:
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
) -> dict[str, Any]:
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


class EvalBody(Body):
    release: str | None = None  # default: the canary, else the stable release


@router.post("/tenants/{tenant}/models/{alias}/eval")
async def run_eval(
    tenant: str, alias: str, body: EvalBody, state: StateDep, actor: ActorDep
) -> dict[str, Any]:
    """Run a release's evaluation set now; per-case results (a failing eval is still a 200)."""
    release = None if body.release is None else _name(body.release, "release")
    report = await evaluate_alias(state, _name(tenant, "tenant id"), _name(alias, "alias"), release)
    return report.view()


@router.post("/tenants/{tenant}/models/{alias}/rollback")
async def rollback(
    tenant: str, alias: str, body: RollbackBody, state: StateDep, actor: ActorDep
) -> dict[str, Any]:
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
) -> dict[str, Any]:
    now = time.time()

    def change(current: Alias) -> Alias:
        flags = current.flags.model_dump()
        if body.kill_switch is not None:
            flags["kill_switch"] = body.kill_switch
        if body.auto_rollback is not None:
            flags["auto_rollback"] = body.auto_rollback
        return rollout.set_flags(current, Flags(**flags), now=now)

    return await _mutate(
        state, tenant, alias, body.expected_revision, change, "set_flags", body.reason, actor
    )


@router.get("/audit")
async def audit(
    state: StateDep,
    actor: ActorDep,
    tenant: Annotated[str | None, Query()] = None,
    count: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
    if tenant is not None:
        _name(tenant, "tenant id")
    return await state.store.audit(tenant, count)
