"""Compact records: what the request path needs of each registry record, decoded straight from
the stored JSON.

Why not the pydantic models: at 10,000 tenants the snapshot held 182 MiB of pydantic objects and
took 1.7 s to parse. msgspec structs (`gc=False`, no per-instance dict) decoded by a typed decoder
cost a fraction of both (NOTES-17.md has the measurements). Fields the request path never reads
(display names, timestamps, adapter metadata, alias history, evaluation sets) are not decoded;
admin reads and the evaluation gate fetch the full record from Redis when they need it.

The records are immutable; `registry.state.RegistryState` indexes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import msgspec

from registry.models import (
    AdapterVersion,
    Alias,
    ApiKey,
    PriorityClass,
    PromptVersion,
    Release,
    Tenant,
    Thresholds,
)


class BudgetRec(msgspec.Struct, frozen=True, gc=False):
    amount: float
    period: Literal["day", "month"] = "month"


class LimitsRec(msgspec.Struct, frozen=True, gc=False):
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrency: int | None = None
    max_tokens: int | None = None
    max_n: int | None = None
    budget: BudgetRec | None = None


NO_LIMITS = LimitsRec()


class TenantRec(msgspec.Struct, frozen=True, gc=False):
    id: str
    plan: str = "default"
    limits: LimitsRec = NO_LIMITS
    weight: float | None = None  # fair-queue share; None: the plan's
    priority: PriorityClass | None = None
    suspended: bool = False


class KeyLimitsRec(msgspec.Struct, frozen=True, gc=False):
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget: BudgetRec | None = None


class KeyRec(msgspec.Struct, frozen=True, gc=False):
    key_id: str
    tenant: str
    key_hmac: str = ""
    revoked: bool = False
    expires_at: float | None = None
    aliases: tuple[str, ...] = ()  # empty: every alias of the tenant
    limits: KeyLimitsRec | None = None
    secret_id: str = ""


class AdapterRec(msgspec.Struct, frozen=True, gc=False):
    tenant: str
    name: str
    version: int
    path: str
    digest: str
    base_model: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def engine_name(self) -> str:
        """As `AdapterVersion.engine_name`: immutable, never reused for other weights."""
        short = self.digest.removeprefix("sha256:")[:12]
        return f"lg-{self.tenant}-{self.name}-v{self.version}-{short}"


class PromptRec(msgspec.Struct, frozen=True, gc=False):
    tenant: str
    name: str
    version: int
    system_prompt: str
    params: dict[str, Any] = {}
    response_schema: dict[str, Any] | None = None
    refusal_patterns: tuple[str, ...] = ()
    tool_use: Literal["allow", "forbid"] = "allow"
    allowed_tools: tuple[str, ...] | None = None
    completions: Literal["prefix", "raw", "refuse"] = "prefix"

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ThresholdsRec(msgspec.Struct, frozen=True, gc=False):
    min_requests: int = 20
    max_error_rate_delta: float = 0.05
    max_p95_ratio: float = 2.0
    max_refusal_rate_delta: float = 0.10
    max_schema_violation_rate_delta: float = 0.05


DEFAULT_THRESHOLDS = ThresholdsRec()


class ReleaseRec(msgspec.Struct, frozen=True, gc=False):
    id: str
    tenant: str
    alias: str
    adapter: str | None = None
    prompt: str | None = None
    params: dict[str, Any] = {}
    schema_violation: str = "pass"
    thresholds: ThresholdsRec = DEFAULT_THRESHOLDS


class FlagsRec(msgspec.Struct, frozen=True, gc=False):
    kill_switch: bool = False
    auto_rollback: bool = True
    priority: PriorityClass | None = None


DEFAULT_FLAGS = FlagsRec()


class AliasRec(msgspec.Struct, frozen=True, gc=False):
    tenant: str
    alias: str
    stable: str | None = None
    canary: str | None = None
    canary_weight: float = 0.0
    revision: int = 0
    flags: FlagsRec = DEFAULT_FLAGS
    last_good: tuple[str, ...] = ()
    canary_started: float | None = None  # wall seconds; see registry.rollout.canary_started_at


class _HistoryWire(msgspec.Struct, gc=False):
    action: str = ""
    canary: str | None = None
    at: float = 0.0


class _AliasWire(msgspec.Struct, gc=False):
    """The stored alias with just enough history to know when its canary started."""

    tenant: str
    alias: str
    stable: str | None = None
    canary: str | None = None
    canary_weight: float = 0.0
    revision: int = 0
    flags: FlagsRec = DEFAULT_FLAGS
    last_good: tuple[str, ...] = ()
    history: tuple[_HistoryWire, ...] = ()


_tenant = msgspec.json.Decoder(TenantRec)
_key = msgspec.json.Decoder(KeyRec)
_adapter = msgspec.json.Decoder(AdapterRec)
_prompt = msgspec.json.Decoder(PromptRec)
_release = msgspec.json.Decoder(ReleaseRec)
_alias = msgspec.json.Decoder(_AliasWire)


def _tenant_done(rec: TenantRec) -> TenantRec:
    if rec.limits == NO_LIMITS and rec.limits is not NO_LIMITS:  # the common case shares one
        rec = msgspec.structs.replace(rec, limits=NO_LIMITS)
    return rec


def decode_tenant(raw: bytes | str) -> TenantRec:
    return _tenant_done(_tenant.decode(raw))


def decode_key(raw: bytes | str) -> KeyRec:
    return _key.decode(raw)


def decode_adapter(raw: bytes | str) -> AdapterRec:
    return _adapter.decode(raw)


def decode_prompt(raw: bytes | str) -> PromptRec:
    return _prompt.decode(raw)


def _release_done(rec: ReleaseRec) -> ReleaseRec:
    if rec.thresholds == DEFAULT_THRESHOLDS and rec.thresholds is not DEFAULT_THRESHOLDS:
        rec = msgspec.structs.replace(rec, thresholds=DEFAULT_THRESHOLDS)
    return rec


def decode_release(raw: bytes | str) -> ReleaseRec:
    return _release_done(_release.decode(raw))


def decode_alias(raw: bytes | str) -> AliasRec:
    return _alias_done(_alias.decode(raw))


def _alias_done(w: _AliasWire) -> AliasRec:
    started = None
    if w.canary is not None:
        for entry in reversed(w.history):
            if entry.action == "canary" and entry.canary == w.canary:
                started = entry.at
                break
    flags = DEFAULT_FLAGS if w.flags == DEFAULT_FLAGS else w.flags
    return AliasRec(
        w.tenant, w.alias, w.stable, w.canary, w.canary_weight, w.revision, flags,
        w.last_good, started,
    )  # fmt: skip


_many: dict[str, tuple[msgspec.json.Decoder[Any], Callable[[Any], Any] | None]] = {
    "tenants": (msgspec.json.Decoder(list[TenantRec]), _tenant_done),
    "keys": (msgspec.json.Decoder(list[KeyRec]), None),
    "adapters": (msgspec.json.Decoder(list[AdapterRec]), None),
    "prompts": (msgspec.json.Decoder(list[PromptRec]), None),
    "releases": (msgspec.json.Decoder(list[ReleaseRec]), _release_done),
    "aliases": (msgspec.json.Decoder(list[_AliasWire]), _alias_done),
}


def decode_many(kind: str, values: Iterable[bytes | str]) -> list[Any]:
    """Many stored records of one kind in one decoder call (a full load: no Python-level loop
    per record for the JSON itself)."""
    blobs = [v.encode() if isinstance(v, str) else v for v in values]
    decoder, done = _many[kind]
    records: list[Any] = decoder.decode(b"[" + b",".join(blobs) + b"]")
    return records if done is None else [done(r) for r in records]


# What code that serves from the snapshot and from full records alike accepts.
AnyTenant = TenantRec | Tenant
AnyKey = KeyRec | ApiKey
AnyAdapter = AdapterRec | AdapterVersion
AnyRelease = ReleaseRec | Release
AnyAlias = AliasRec | Alias
AnyPrompt = PromptRec | PromptVersion
AnyThresholds = ThresholdsRec | Thresholds


# -- from the full (pydantic) records, for callers that hold one -------------------------------


def tenant_rec(tenant: Tenant) -> TenantRec:
    return decode_tenant(tenant.model_dump_json())


def key_rec(key: ApiKey) -> KeyRec:
    return KeyRec(key.key_id, key.tenant, key.key_hmac, key.revoked)


def adapter_rec(adapter: AdapterVersion) -> AdapterRec:
    return AdapterRec(
        adapter.tenant, adapter.name, adapter.version, adapter.path, adapter.digest,
        adapter.base_model,
    )  # fmt: skip


def release_rec(release: Release) -> ReleaseRec:
    return decode_release(release.model_dump_json())


def alias_rec(alias: Alias) -> AliasRec:
    return decode_alias(alias.model_dump_json())
