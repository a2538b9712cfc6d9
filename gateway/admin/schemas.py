"""The admin API's bodies: request models (`*Create`, `*Body`, `TenantPatch`) and response models
(`*Public`). Routes declare both, so `/openapi.json` documents what each operation takes and
answers, and `gateway.admin.client` parses the answers with the same models.

Request models reject unknown fields and anything the registry could not store and read back;
response models are what leaves the gateway (never an API key's HMAC, never an alias's internal
rollback stack).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    computed_field,
    model_validator,
)

from registry.models import (
    NAME_PATTERN,
    AdapterVersion,
    Alias,
    Arm,
    Flags,
    HistoryEntry,
    KeyLimits,
    Limits,
    PriorityClass,
    PromptVersion,
    Release,
    Role,
    Tenant,
    Thresholds,
)

# -- requests -------------------------------------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _storable(self) -> Self:
        """Refuse what the registry cannot store and read back (422, nothing written): Python's
        JSON parser accepts `NaN`, `1e400` (inf), integers of any size and lone surrogates;
        orjson cannot encode the last two, and writes NaN/inf as null, which would make a release
        or tenant record unreadable (and the snapshot with it)."""
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
    """The name rule in the schema only: routes check it (422 `invalid_name`, not pydantic's)."""
    return Field(json_schema_extra={"pattern": NAME_PATTERN})


class TenantCreate(Body):
    id: str = _documented_name()
    display_name: str = ""
    plan: str = "default"
    limits: Limits | None = None
    weight: float | None = Field(default=None, ge=0.1, le=100.0)  # None: the plan's
    priority: PriorityClass | None = None


class TenantPatch(Body):
    display_name: str | None = None
    limits: Limits | None = None
    plan: str | None = None
    weight: float | None = Field(default=None, ge=0.1, le=100.0)
    priority: PriorityClass | None = None


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
    tool_use: Literal["allow", "forbid"] = "allow"
    allowed_tools: (
        list[Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]] | None
    ) = Field(default=None, max_length=128)
    completions: Literal["prefix", "raw", "refuse"] = "prefix"


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
    priority: PriorityClass | None = None
    expected_revision: int | None = None
    reason: str = ""


class KeyCreate(Body):
    """A new key's name, lifetime, aliases and limits (all optional)."""

    name: str = Field(default="", max_length=64)
    expires_in_s: int | None = Field(default=None, ge=60, le=10 * 366 * 86_400)
    aliases: list[str] = Field(default_factory=list, max_length=100)  # empty: every alias
    limits: KeyLimits | None = None


class PrincipalCreate(Body):
    name: str = _documented_name()
    role: Role
    tenants: list[str] = Field(default_factory=list, max_length=100)  # empty: every tenant
    expires_in_s: int | None = Field(default=None, ge=60, le=10 * 366 * 86_400)


class EvalBody(Body):
    release: str | None = None  # default: the canary, else the stable release


# -- responses ------------------------------------------------------------------------------------


class Public(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TenantPublic(Tenant):
    pass


class UsagePublic(Public):
    """Usage and remaining quota: from Redis (`source: redis`), else this gateway's own counts."""

    source: Literal["redis", "local"]
    period: Literal["day", "month"]
    period_id: str
    in_flight: int
    requests_last_minute: int
    tokens_last_minute: int
    spent: float | None
    reserved: float
    period_reset_s: float
    budget: float | None
    remaining_budget: float | None
    degraded: bool
    pending_reconciliation: int


class AliasPublic(Public):
    """A model alias: which release is stable, which is canary at what weight, and its history."""

    tenant: str
    alias: str
    stable: str | None
    canary: str | None
    canary_weight: float
    revision: int
    flags: Flags
    history: tuple[HistoryEntry, ...]

    @classmethod
    def of(cls, alias: Alias) -> AliasPublic:
        return cls.model_validate(alias.model_dump(exclude={"last_good"}))


class TenantDetailPublic(TenantPublic):
    usage: UsagePublic
    models: tuple[AliasPublic, ...]


class KeyPublic(Public):
    """A new API key: shown once, never stored (the registry keeps its HMAC)."""

    key_id: str
    api_key: str
    tenant: str
    name: str = ""
    expires_at: float | None = None
    aliases: tuple[str, ...] = ()


class KeyInfoPublic(Public):
    """A key as listed: never the key or its HMAC. `last_used_at`: the start of the minute of
    its last use (written once a minute by each gateway), None if never used."""

    key_id: str
    tenant: str
    name: str
    prefix: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    aliases: tuple[str, ...]
    limits: KeyLimits | None
    revoked: bool
    secret_id: str


class PrincipalPublic(Public):
    name: str
    role: Role
    tenants: tuple[str, ...]  # empty: every tenant
    created_at: float
    expires_at: float | None
    revoked: bool
    created_by: str


class PrincipalCreatedPublic(PrincipalPublic):
    token: str  # shown once; the registry keeps its HMAC


class CallerPublic(Public):
    """Who the token in use is: the audit name, role and tenants (None: every tenant)."""

    name: str
    role: Role
    tenants: tuple[str, ...] | None


class SecretPublic(Public):
    """An HMAC secret keys are verified under (never its value): id, whether new keys are made
    under it, and how many keys are."""

    id: str
    current: bool
    keys: int


REF = "name@version, what a release names"


class AdapterVersionPublic(AdapterVersion):
    # `ref` is computed by the record; an answer's `ref` is read back by computing it again.
    model_config = ConfigDict(extra="ignore")
    ref = computed_field(description=REF)(AdapterVersion.ref)  # type: ignore[pydantic-field]


class PromptVersionPublic(PromptVersion):
    model_config = ConfigDict(extra="ignore")
    ref = computed_field(description=REF)(PromptVersion.ref)  # type: ignore[pydantic-field]


class ReleasePublic(Release):
    release: str  # the release id again, under the name the rollout routes take


class AdapterPushPublic(AdapterVersionPublic):
    skipped: list[str]  # trainer files left out of the stored artifact (tokenizer, README, ...)


class AliasArmPublic(Public):
    alias: str
    arm: Arm


class ReleaseUserPublic(Public):
    release: str
    aliases: list[AliasArmPublic]


class AdapterVersionListedPublic(AdapterVersionPublic):
    used_by: list[ReleaseUserPublic]


class PromptVersionListedPublic(Public):
    """A prompt version without its system prompt (list views stay small), and its users."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    tenant: str
    name: str
    version: int
    ref: str
    created_at: float
    retired_at: float | None = None
    used_by: list[ReleaseUserPublic]


class ReleaseListedPublic(Release):
    used_by: list[AliasArmPublic]


class ArmNumbersPublic(Public):
    n: int
    errors: int
    error_rate: float
    refusal_rate: float
    schema_violation_rate: float
    p95_ms: float | None


class CanaryStatusPublic(Public):
    """The canary's numbers as the guard judges them: summed over live gateways (`source`
    `fleet`), or this gateway's own windows when Redis is away (`local`)."""

    tenant: str
    alias: str
    revision: int
    stable: str | None
    canary: str | None
    canary_weight: float
    guarded: bool  # false: no canary in progress (or the kill switch is on)
    source: Literal["fleet", "local"] | None = None
    gateways: int | None = None
    arms: dict[Literal["stable", "canary"], ArmNumbersPublic] | None = None
    action: Literal["wait", "hold", "rollback", "promote"] | None = None
    would_trip: list[str] = []
    thresholds: dict[str, Any] | None = None
    reason: str | None = None


class CaseResultPublic(Public):
    case: int
    name: str | None
    passed: bool
    failures: tuple[str, ...]
    latency_ms: float
    output: str


class EvalReportPublic(Public):
    release: str
    passed: bool
    pass_rate: float
    min_pass_rate: float
    cases: tuple[CaseResultPublic, ...]


class AuditEntryPublic(Public):
    """One audited write, newest first; `before`/`after` are the records it changed."""

    # Fields a later write script adds reach the operator instead of failing the answer.
    model_config = ConfigDict(frozen=True, extra="allow")

    id: str
    time: float
    epoch: int
    actor: str
    action: str
    tenant: str
    target: str
    reason: str
    before: Any
    after: Any
