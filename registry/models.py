"""Registry records. Versions and releases are immutable; an alias moves between releases.
Retiring one (`retired_at`) is the only change a version or release record ever sees.

All records are frozen pydantic models serialised as JSON in Redis. Identifiers are validated by
`NAME_PATTERN` everywhere they enter the system, so they are safe as Redis key parts, engine adapter
name parts and Prometheus label values.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"
NAME_RE = re.compile(NAME_PATTERN)
# Metrics label an unregistered tenant, alias or release "unknown": a record of that name would
# share its series with strangers' requests.
RESERVED_NAMES = frozenset({"unknown"})


def is_name(value: object) -> bool:
    """A valid identifier: NAME_PATTERN over the whole string and not reserved."""
    return (
        isinstance(value, str)
        and NAME_RE.fullmatch(value) is not None
        and value not in RESERVED_NAMES
    )


def _not_reserved(value: str) -> str:
    if value in RESERVED_NAMES:
        raise ValueError(f"{value!r} is reserved")
    return value


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN), AfterValidator(_not_reserved)]


class Record(BaseModel):
    # NaN/inf would be written as JSON null and the record (and with it the whole snapshot) could
    # not be read back.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Budget(Record):
    amount: float = Field(ge=0)
    period: Literal["day", "month"] = "month"


class Limits(Record):
    """Per-tenant limits; None means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_n: int | None = Field(default=None, ge=1, le=128)  # choices per request; gateway max_n
    budget: Budget | None = None


# Scheduling classes, most urgent first: the gateway's fair queue serves them as strict priority
# bands (their index), and engines with priority scheduling get the index as vLLM's `priority`.
PriorityClass = Literal["interactive", "standard", "batch"]
PRIORITY_CLASSES: tuple[PriorityClass, ...] = ("interactive", "standard", "batch")


class Tenant(Record):
    id: Name
    display_name: str = ""
    plan: str = "default"
    limits: Limits = Limits()
    # Fair-queue share under contention and scheduling class; None: the plan's (gateway settings).
    weight: float | None = Field(default=None, ge=0.1, le=100.0)
    priority: PriorityClass | None = None
    created_at: float = 0.0
    # Every key of a suspended tenant answers 403 `tenant_suspended`; nothing else changes.
    suspended: bool = False


class KeyLimits(Record):
    """Per-key limits, checked in addition to the tenant's; None means only the tenant's."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    budget: Budget | None = None


class ApiKey(Record):
    """A tenant key as stored: only its HMAC, never the key itself. The fields after `revoked`
    came with key lifecycle; their defaults keep older records readable."""

    key_id: str
    tenant: Name
    key_hmac: str
    created_at: float = 0.0
    revoked: bool = False
    revoked_at: float | None = None  # retention counts from here (None: records before it)
    expires_at: float | None = None
    aliases: tuple[Name, ...] = ()  # empty: every alias of the tenant
    limits: KeyLimits | None = None
    secret_id: str = ""  # which HMAC secret the key is hashed under ("": the configured one)


Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")  # each may do what the ones before may


class KeyLabel(Record):
    """What a key listing shows besides the record: kept apart (`key_labels`), since the hot
    path never needs it."""

    name: str = ""
    prefix: str = ""  # the first characters of the key, to recognise it in a listing


class Principal(Record):
    """A named admin identity as stored: its token only as an HMAC. `tenants` empty: all."""

    name: Name
    role: Role
    tenants: tuple[Name, ...] = ()
    token_hmac: str
    created_at: float = 0.0
    expires_at: float | None = None
    revoked: bool = False
    created_by: str = "admin"


class AdapterVersion(Record):
    tenant: Name
    name: Name
    version: int
    path: str  # relative to the adapter store root
    digest: str  # sha256 over the artifact files, "sha256:<hex>"
    base_model: str
    rank: int
    target_modules: tuple[str, ...]
    size_bytes: int
    alpha: float | None = None  # lora_alpha; None for records written before it was kept
    metadata: dict[str, Any] = {}
    created_by: str = "admin"
    created_at: float = 0.0
    retired_at: float | None = None  # no new release may name it; listed, never deleted here

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def engine_name(self) -> str:
        """Immutable engine-side adapter name; never reused for other weights (a vLLM caveat in
        deploy/ENGINE.md)."""
        short = self.digest.removeprefix("sha256:")[:12]
        return f"lg-{self.tenant}-{self.name}-v{self.version}-{short}"


class PromptVersion(Record):
    tenant: Name
    name: Name
    version: int
    system_prompt: str
    params: dict[str, Any] = {}
    response_schema: dict[str, Any] | None = None
    refusal_patterns: tuple[str, ...] = ()
    # Tool calling for this prompt: "forbid" refuses requests with tools (400 tools_forbidden);
    # `allowed_tools` (when set) names the only functions a request may define.
    tool_use: Literal["allow", "forbid"] = "allow"
    allowed_tools: tuple[str, ...] | None = None
    # /v1/completions: "prefix" puts the system prompt before the raw prompt, "raw" sends the
    # prompt alone, "refuse" answers 400 completions_forbidden.
    completions: Literal["prefix", "raw", "refuse"] = "prefix"
    created_by: str = "admin"
    created_at: float = 0.0
    retired_at: float | None = None  # no new release may name it

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Thresholds(Record):
    """Canary guard: exceeding any of these (canary vs stable) triggers an automatic rollback."""

    min_requests: int = 20
    max_error_rate_delta: float = 0.05
    max_p95_ratio: float = 2.0
    max_refusal_rate_delta: float = 0.10
    max_schema_violation_rate_delta: float = 0.05


class Release(Record):
    id: str  # "<alias>-r<n>", unique per tenant
    tenant: Name
    alias: Name
    adapter: str | None  # "name@version"
    prompt: str | None  # "name@version"
    params: dict[str, Any] = {}
    schema_violation: Literal["pass", "reject"] = "pass"
    thresholds: Thresholds = Thresholds()
    eval: dict[str, Any] | None = None
    created_by: str = "admin"
    created_at: float = 0.0
    retired_at: float | None = None  # no alias may route or roll back to it


class Flags(Record):
    kill_switch: bool = False
    auto_rollback: bool = True
    priority: PriorityClass | None = None  # the alias's scheduling class; None: the tenant's


class HistoryEntry(Record):
    revision: int
    action: str
    stable: str | None
    canary: str | None
    canary_weight: float
    reason: str = ""
    at: float = 0.0


class Alias(Record):
    tenant: Name
    alias: Name
    stable: str | None = None  # release id
    canary: str | None = None
    canary_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    revision: int = 0
    flags: Flags = Flags()
    # Releases that were stable, oldest first; rollback pops the last good one.
    last_good: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()


Arm = Literal["stable", "canary"]
