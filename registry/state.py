"""The registry at one epoch, as the gateway serves from it, and its parse from raw Redis hashes.

Pure: no Redis, no I/O. `registry/redis_edge.py` reads the hashes, `registry/snapshot.py` keeps
the current state in step with Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from registry.models import AdapterVersion, Alias, ApiKey, PromptVersion, Release, Tenant
from registry.refs import parse_ref

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class RegistryState:
    """The whole registry at one epoch. Treat as immutable; lookups are pure."""

    epoch: int = -1  # -1: never loaded
    tenants: Mapping[str, Tenant] = field(default_factory=dict)
    keys: Mapping[str, ApiKey] = field(default_factory=dict)  # by HMAC
    adapters: Mapping[tuple[str, str, int], AdapterVersion] = field(default_factory=dict)
    prompts: Mapping[tuple[str, str, int], PromptVersion] = field(default_factory=dict)
    releases: Mapping[tuple[str, str], Release] = field(default_factory=dict)
    aliases: Mapping[tuple[str, str], Alias] = field(default_factory=dict)

    def tenant_for_key(self, key_hmac: str) -> ApiKey | None:
        """The key record if the key is known, not revoked and its tenant exists."""
        key = self.keys.get(key_hmac)
        if key is None or key.revoked or key.tenant not in self.tenants:
            return None
        return key

    def alias(self, tenant: str, alias: str) -> Alias | None:
        return self.aliases.get((tenant, alias))

    def aliases_of(self, tenant: str) -> list[Alias]:
        return sorted(
            (a for (t, _), a in self.aliases.items() if t == tenant), key=lambda a: a.alias
        )

    def release(self, tenant: str, release_id: str) -> Release | None:
        return self.releases.get((tenant, release_id))

    def release_parts(self, release: Release) -> tuple[AdapterVersion | None, PromptVersion | None]:
        adapter = prompt = None
        if release.adapter is not None:
            name, version = parse_ref(release.adapter)
            adapter = self.adapters.get((release.tenant, name, version))
        if release.prompt is not None:
            name, version = parse_ref(release.prompt)
            prompt = self.prompts.get((release.tenant, name, version))
        return adapter, prompt


def _records(model: type[R], raw: Mapping[Any, Any]) -> list[R]:
    return [model.model_validate(orjson.loads(v)) for v in raw.values()]


def parse_state(
    epoch: int,
    *,
    tenants: Mapping[Any, Any],
    keys: Mapping[Any, Any],
    adapters: Mapping[Any, Any],
    prompts: Mapping[Any, Any],
    releases: Mapping[Any, Any],
    aliases: Mapping[Any, Any],
) -> RegistryState:
    """Build a state from raw HGETALL results (field -> JSON); pure."""
    return RegistryState(
        epoch=epoch,
        tenants={t.id: t for t in _records(Tenant, tenants)},
        keys={k.key_hmac: k for k in _records(ApiKey, keys)},
        adapters={(a.tenant, a.name, a.version): a for a in _records(AdapterVersion, adapters)},
        prompts={(p.tenant, p.name, p.version): p for p in _records(PromptVersion, prompts)},
        releases={(r.tenant, r.id): r for r in _records(Release, releases)},
        aliases={(a.tenant, a.alias): a for a in _records(Alias, aliases)},
    )
