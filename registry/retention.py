"""Retention: which registry records nothing can reach any more, and may be deleted (pure).

Why: without it the registry only grows (every key ever revoked, every release ever made), and so
does every gateway's snapshot and every full load. What goes, once older than the retention
period (their audit entries stay):
- a revoked key (counted from its revocation);
- a release that is not its alias's stable or canary release and not in its `last_good` list,
  counted from the last time the alias used it (its history) or its creation;
- an adapter or prompt version that no remaining release names, counted from its creation.

Tenants and aliases are never deleted here. `registry.store.RegistryStore.sweep` reads the hashes,
runs `plan` off the event loop and deletes each tenant's share in one guarded write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from registry.keyspace import last_release_field
from registry.refs import parse_ref


class _Key(msgspec.Struct, gc=False):
    key_id: str
    tenant: str
    revoked: bool = False
    revoked_at: float | None = None
    created_at: float = 0.0


class _Version(msgspec.Struct, gc=False):
    tenant: str
    created_at: float = 0.0


class _Release(msgspec.Struct, gc=False):
    tenant: str
    alias: str
    adapter: str | None = None
    prompt: str | None = None
    created_at: float = 0.0


class _Entry(msgspec.Struct, gc=False):
    stable: str | None = None
    canary: str | None = None
    at: float = 0.0


class _Alias(msgspec.Struct, gc=False):
    tenant: str
    stable: str | None = None
    canary: str | None = None
    last_good: tuple[str, ...] = ()
    history: tuple[_Entry, ...] = ()


@dataclass
class TenantSweep:
    """One tenant's deletions, with what must not have changed for them to stay right."""

    tenant: str
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # (hmac, key_id, raw record)
    releases: list[str] = field(default_factory=list)  # hash fields
    adapters: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    # Aliases whose releases go: the raw alias read (unchanged, or it may route there again).
    aliases: dict[str, str] = field(default_factory=dict)
    # The tenant's newest release when read (None: none yet): unchanged, or a new release may
    # name a version deleted here.
    newest_release: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.keys or self.releases or self.adapters or self.prompts)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def plan(
    now: float,
    retention_s: float,
    *,
    keys: Mapping[Any, Any],
    adapters: Mapping[Any, Any],
    prompts: Mapping[Any, Any],
    releases: Mapping[Any, Any],
    aliases: Mapping[Any, Any],
    seq: Mapping[Any, Any],
) -> list[TenantSweep]:
    """The deletions due at `now` over raw HGETALL results (field -> JSON), by tenant; `seq` is
    the counters hash, read in the same transaction."""
    cutoff = now - retention_s
    out: dict[str, TenantSweep] = {}

    def of(tenant: str) -> TenantSweep:
        return out.setdefault(tenant, TenantSweep(tenant))

    for fld, raw in keys.items():
        key = msgspec.json.decode(raw, type=_Key)
        gone_at = key.revoked_at if key.revoked_at is not None else key.created_at
        if key.revoked and gone_at < cutoff:
            of(key.tenant).keys.append((_text(fld), key.key_id, _text(raw)))

    alias_raw = {_text(f): _text(v) for f, v in aliases.items()}
    used: dict[str, float] = {}  # release field -> last time an alias routed to it
    reachable: set[str] = set()
    for raw in alias_raw.values():
        alias = msgspec.json.decode(raw, type=_Alias)
        for rid in (alias.stable, alias.canary, *alias.last_good):
            if rid is not None:
                reachable.add(f"{alias.tenant}:{rid}")
        for entry in alias.history:
            for rid in (entry.stable, entry.canary):
                if rid is not None:
                    ref = f"{alias.tenant}:{rid}"
                    used[ref] = max(used.get(ref, 0.0), entry.at)

    kept_refs: set[tuple[str, str, str]] = set()  # (tenant, kind, "name:version")
    for fld, raw in releases.items():
        name = _text(fld)
        release = msgspec.json.decode(raw, type=_Release)
        last = max(release.created_at, used.get(name, 0.0))
        if name not in reachable and last < cutoff:
            sweep = of(release.tenant)
            sweep.releases.append(name)
            alias_field = f"{release.tenant}:{release.alias}"
            if alias_field in alias_raw:
                sweep.aliases[alias_field] = alias_raw[alias_field]
            continue
        for kind, named in (("adapter", release.adapter), ("prompt", release.prompt)):
            if named is not None:
                ver_name, number = parse_ref(named)
                kept_refs.add((release.tenant, kind, f"{ver_name}:{number}"))

    for kind, hashed in (("adapter", adapters), ("prompt", prompts)):
        for fld, raw in hashed.items():
            name = _text(fld)
            tenant, _, rest = name.partition(":")
            record = msgspec.json.decode(raw, type=_Version)
            if (tenant, kind, rest) not in kept_refs and record.created_at < cutoff:
                target = of(tenant)
                (target.adapters if kind == "adapter" else target.prompts).append(name)
    newest = {_text(f): _text(v) for f, v in seq.items()}
    for tenant, sweep in out.items():
        sweep.newest_release = newest.get(last_release_field(tenant))
    return [s for _, s in sorted(out.items()) if not s.empty]
