"""RegistryStore: tenants, keys, adapter and prompt versions, releases and aliases in Redis.

Every write goes through `RedisEdge._write` (one atomic `write.lua` call with its audit entry and
invalidation; registry/redis_edge.py says why and how Redis must be configured). Names are
validated before anything touches Redis.

    store = RegistryStore(redis, secret=b"...")
    await store.create_tenant("acme", actor="admin")
    record, api_key = await store.issue_key("acme", actor="admin")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel

from registry import rollout
from registry.access import AccessOps
from registry.errors import (
    AlreadyExists,
    InvalidRollout,
    NotFound,
    RevisionConflict,
)
from registry.keyspace import last_release_field, seq_field, tenant_field, version_field
from registry.lifecycle import LifecycleOps
from registry.models import (
    AdapterVersion,
    Alias,
    ApiKey,
    KeyLabel,
    KeyLimits,
    Limits,
    PriorityClass,
    PromptVersion,
    Release,
    Tenant,
    Thresholds,
)
from registry.redis_edge import text
from registry.refs import check_name, check_release_id
from registry.retention_store import RetentionSweeps
from registry.secrets import hash_key, new_api_key
from registry.writes import WriteSpec, encode, encode_value, new_marker, template

if TYPE_CHECKING:
    from adapters.artifact import ArtifactInfo

R = TypeVar("R", bound=BaseModel)
_UPDATE_ATTEMPTS = 5


def _parse(model: type[R], raw: bytes | str) -> R:
    return model.model_validate(orjson.loads(raw))


def _alias_summary(alias: Alias | None) -> str:
    """Audit view of an alias: the routing-relevant fields, not its whole history."""
    if alias is None:
        return ""
    return encode_value(
        {
            "stable": alias.stable,
            "canary": alias.canary,
            "canary_weight": alias.canary_weight,
            "revision": alias.revision,
            "flags": alias.flags.model_dump(),
        }
    )


class RegistryStore(RetentionSweeps, AccessOps, LifecycleOps):
    """The registry's operations; reads of the whole state and the audit are RedisEdge's, the
    retention sweep RetentionSweeps' (registry/retention_store.py), principals, key listings and
    suspension AccessOps's (registry/access.py), retiring LifecycleOps' (registry/lifecycle.py)."""

    # -- tenants --------------------------------------------------------------------------------

    async def create_tenant(
        self,
        tenant_id: str,
        *,
        display_name: str = "",
        plan: str = "default",
        limits: Limits | None = None,
        weight: float | None = None,
        priority: PriorityClass | None = None,
        actor: str,
    ) -> Tenant:
        check_name(tenant_id, "tenant id")
        tenant = Tenant(
            id=tenant_id, display_name=display_name, plan=plan, limits=limits or Limits(),
            weight=weight, priority=priority, created_at=self._clock(),
        )  # fmt: skip
        spec = WriteSpec()
        ks = self.keyspace
        spec.require_absent(ks.tenants, tenant_id, AlreadyExists(f"tenant {tenant_id!r} exists"))
        spec.put(ks.tenants, tenant_id, encode(tenant))
        async with self._guard():
            await self._write(
                spec, actor=actor, action="create_tenant", tenant=tenant_id, target=tenant_id,
                after=encode(tenant),
            )  # fmt: skip
        return tenant

    async def update_tenant(
        self,
        tenant_id: str,
        *,
        limits: Limits | None = None,
        display_name: str | None = None,
        scheduling: Mapping[str, Any] | None = None,
        actor: str,
    ) -> Tenant:
        """Compare-and-set on the stored bytes; retried a few times since the change is a merge.
        `scheduling`: any of plan, weight, priority (fair queuing and engine priority)."""
        check_name(tenant_id, "tenant id")
        ks = self.keyspace
        async with self._guard():
            for _ in range(_UPDATE_ATTEMPTS):
                raw = await self._hget(ks.tenants, tenant_id)
                if raw is None:
                    raise NotFound(f"tenant {tenant_id!r} not found")
                old = _parse(Tenant, raw)
                changes: dict[str, Any] = {}
                if limits is not None:
                    changes["limits"] = limits
                if display_name is not None:
                    changes["display_name"] = display_name
                changes.update(scheduling or {})
                new = Tenant.model_validate({**dict(old), **changes})
                spec = WriteSpec()
                spec.require_equals(ks.tenants, tenant_id, text(raw), RevisionConflict("raced"))
                spec.put(ks.tenants, tenant_id, encode(new))
                try:
                    await self._write(
                        spec, actor=actor, action="update_tenant", tenant=tenant_id,
                        target=tenant_id, before=text(raw), after=encode(new),
                    )  # fmt: skip
                except RevisionConflict:
                    continue
                return new
        raise RevisionConflict(f"tenant {tenant_id!r} kept changing; try again")

    async def get_tenant(self, tenant_id: str) -> Tenant:
        check_name(tenant_id, "tenant id")
        async with self._guard():
            raw = await self._hget(self.keyspace.tenants, tenant_id)
        if raw is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        return _parse(Tenant, raw)

    async def find_key(self, key_hmac: str) -> ApiKey | None:
        """One key by its HMAC, straight from Redis (for keys newer than a snapshot)."""
        async with self._guard():
            raw = await self._hget(self.keyspace.keys, key_hmac)
        return None if raw is None else _parse(ApiKey, raw)

    async def list_tenants(self) -> list[Tenant]:
        async with self._guard():
            raw: Mapping[Any, Any] = await self._redis.hgetall(self.keyspace.tenants)
        return sorted((_parse(Tenant, v) for v in raw.values()), key=lambda t: t.id)

    # -- keys -----------------------------------------------------------------------------------

    async def issue_key(
        self,
        tenant_id: str,
        *,
        actor: str,
        name: str = "",
        expires_at: float | None = None,
        aliases: tuple[str, ...] = (),
        limits: KeyLimits | None = None,
        secret: tuple[str, bytes] | None = None,
    ) -> tuple[ApiKey, str]:
        """Returns the record and the plaintext key; the plaintext is never stored or logged.
        `secret`: (id, bytes) of the HMAC secret to hash under (default: the store's)."""
        check_name(tenant_id, "tenant id")
        for alias in aliases:
            check_name(alias, "alias")
        key_id, api_key = new_api_key()
        secret_id, key_secret = secret if secret is not None else ("", self._secret)
        record = ApiKey(
            key_id=key_id, tenant=tenant_id, key_hmac=hash_key(key_secret, api_key),
            created_at=self._clock(), expires_at=expires_at, aliases=tuple(sorted(set(aliases))),
            limits=limits, secret_id=secret_id,
        )  # fmt: skip
        ks = self.keyspace
        spec = WriteSpec()
        self._tenant_exists(spec, tenant_id)
        spec.require_absent(ks.keys, record.key_hmac, AlreadyExists("key collision; try again"))
        spec.put(ks.keys, record.key_hmac, encode(record))
        spec.put(ks.key_ids, tenant_field(tenant_id, key_id), record.key_hmac)
        spec.put(ks.key_labels, record.key_hmac, encode(KeyLabel(name=name, prefix=api_key[:7])))
        async with self._guard():
            await self._write(
                spec, actor=actor, action="issue_key", tenant=tenant_id, target=key_id,
                after=encode_value(
                    {"key_id": key_id, "revoked": False, "name": name, "expires_at": expires_at,
                     "aliases": list(record.aliases), "secret_id": secret_id}
                ),
            )  # fmt: skip
        return record, api_key

    async def revoke_key(self, tenant_id: str, key_id: str, *, actor: str) -> None:
        """Idempotent: revoking a revoked key succeeds without writing."""
        check_name(tenant_id, "tenant id")
        check_name(key_id, "key id")
        ks = self.keyspace
        missing = NotFound(f"key {key_id!r} of tenant {tenant_id!r} not found")
        async with self._guard():
            key_hmac = await self._hget(ks.key_ids, tenant_field(tenant_id, key_id))
            raw = None if key_hmac is None else await self._hget(ks.keys, text(key_hmac))
            if key_hmac is None or raw is None:
                raise missing
            old = _parse(ApiKey, raw)
            if old.revoked:
                return
            spec = WriteSpec()
            spec.require_equals(ks.keys, old.key_hmac, text(raw), missing)
            gone = old.model_copy(update={"revoked": True, "revoked_at": self._clock()})
            spec.put(ks.keys, old.key_hmac, encode(gone))
            await self._write(
                spec, actor=actor, action="revoke_key", tenant=tenant_id, target=key_id,
                before=encode_value({"key_id": key_id, "revoked": False}),
                after=encode_value({"key_id": key_id, "revoked": True}),
            )  # fmt: skip

    # -- versions and releases ------------------------------------------------------------------

    async def _create_versioned(
        self,
        record: BaseModel,
        *,
        hash_key_name: str,
        tenant_id: str,
        name: str,
        kind: Literal["adapter", "prompt"],
        marker: int,
        extra: WriteSpec,
        actor: str,
    ) -> int:
        text = template(encode(record), marker)
        extra.allocate(self.keyspace.seq, seq_field(kind, tenant_id, name))
        extra.put(hash_key_name, template(version_field(tenant_id, name, marker), marker), text)
        async with self._guard():
            n = await self._write(
                extra, actor=actor, action=f"register_{kind}_version", tenant=tenant_id,
                target=template(f"{name}@{marker}", marker), after=text,
            )  # fmt: skip
        return int(n)

    async def register_adapter_version(
        self,
        tenant_id: str,
        name: str,
        info: ArtifactInfo,
        *,
        metadata: Mapping[str, Any] | None = None,
        actor: str,
    ) -> AdapterVersion:
        check_name(tenant_id, "tenant id")
        check_name(name, "adapter name")
        marker = new_marker()
        draft = AdapterVersion(
            tenant=tenant_id, name=name, version=marker, path=info.relpath, digest=info.digest,
            base_model=info.base_model, rank=info.rank, alpha=info.alpha,
            target_modules=tuple(info.target_modules), size_bytes=info.size_bytes,
            metadata=dict(metadata or {}), created_by=actor, created_at=self._clock(),
        )  # fmt: skip
        spec = WriteSpec()
        self._tenant_exists(spec, tenant_id)
        n = await self._create_versioned(
            draft, hash_key_name=self.keyspace.adapters, tenant_id=tenant_id, name=name,
            kind="adapter", marker=marker, extra=spec, actor=actor,
        )  # fmt: skip
        return draft.model_copy(update={"version": n})

    async def register_prompt_version(
        self,
        tenant_id: str,
        name: str,
        *,
        system_prompt: str,
        params: Mapping[str, Any] | None = None,
        response_schema: Mapping[str, Any] | None = None,
        refusal_patterns: tuple[str, ...] | list[str] = (),
        tool_use: Literal["allow", "forbid"] = "allow",
        allowed_tools: tuple[str, ...] | list[str] | None = None,
        completions: Literal["prefix", "raw", "refuse"] = "prefix",
        actor: str,
    ) -> PromptVersion:
        check_name(tenant_id, "tenant id")
        check_name(name, "prompt name")
        marker = new_marker()
        draft = PromptVersion(
            tenant=tenant_id, name=name, version=marker, system_prompt=system_prompt,
            params=dict(params or {}),
            response_schema=None if response_schema is None else dict(response_schema),
            refusal_patterns=tuple(refusal_patterns), tool_use=tool_use,
            allowed_tools=None if allowed_tools is None else tuple(allowed_tools),
            completions=completions, created_by=actor, created_at=self._clock(),
        )  # fmt: skip
        spec = WriteSpec()
        self._tenant_exists(spec, tenant_id)
        n = await self._create_versioned(
            draft, hash_key_name=self.keyspace.prompts, tenant_id=tenant_id, name=name,
            kind="prompt", marker=marker, extra=spec, actor=actor,
        )  # fmt: skip
        return draft.model_copy(update={"version": n})

    async def create_release(
        self,
        tenant_id: str,
        alias: str,
        *,
        adapter: str | None = None,
        prompt: str | None = None,
        params: Mapping[str, Any] | None = None,
        eval: Mapping[str, Any] | None = None,
        thresholds: Thresholds | None = None,
        schema_violation: Literal["pass", "reject"] = "pass",
        actor: str,
    ) -> Release:
        """A new immutable release; the first release of a new alias becomes its stable one."""
        check_name(tenant_id, "tenant id")
        check_name(alias, "alias")
        ks = self.keyspace
        spec = WriteSpec()
        self._tenant_exists(spec, tenant_id)
        if adapter is not None:
            await self.require_live_version(spec, tenant_id, "adapter", adapter)
        if prompt is not None:
            await self.require_live_version(spec, tenant_id, "prompt", prompt)
        marker = new_marker()
        now = self._clock()
        draft = Release(
            id=rollout.release_id(alias, marker), tenant=tenant_id, alias=alias, adapter=adapter,
            prompt=prompt, params=dict(params or {}), schema_violation=schema_violation,
            thresholds=thresholds or Thresholds(), eval=None if eval is None else dict(eval),
            created_by=actor, created_at=now,
        )  # fmt: skip
        first = rollout.first_release(tenant_id, alias, draft.id, now=now)
        text = template(encode(draft), marker)
        spec.allocate(ks.seq, seq_field("release", tenant_id, alias))
        spec.put(ks.releases, template(tenant_field(tenant_id, draft.id), marker), text)
        spec.put(ks.seq, last_release_field(tenant_id), template(draft.id, marker))
        spec.put(
            ks.aliases, tenant_field(tenant_id, alias), template(encode(first), marker), nx=True
        )
        async with self._guard():
            n = await self._write(
                spec, actor=actor, action="create_release", tenant=tenant_id,
                target=template(draft.id, marker), after=text,
            )  # fmt: skip
        return draft.model_copy(update={"id": rollout.release_id(alias, int(n))})

    async def get_release(self, tenant_id: str, release_id: str) -> Release:
        check_name(tenant_id, "tenant id")
        check_release_id(release_id)
        async with self._guard():
            raw = await self._hget(self.keyspace.releases, tenant_field(tenant_id, release_id))
        if raw is None:
            raise NotFound(f"release {release_id!r} of tenant {tenant_id!r} not found")
        return _parse(Release, raw)

    # -- aliases --------------------------------------------------------------------------------

    async def get_alias(self, tenant_id: str, alias: str) -> Alias:
        check_name(tenant_id, "tenant id")
        check_name(alias, "alias")
        async with self._guard():
            raw = await self._hget(self.keyspace.aliases, tenant_field(tenant_id, alias))
        if raw is None:
            raise NotFound(f"model {alias!r} of tenant {tenant_id!r} not found")
        return _parse(Alias, raw)

    async def list_aliases(self, tenant_id: str) -> list[Alias]:
        check_name(tenant_id, "tenant id")
        # HSCAN MATCH: Redis filters the fields, only this tenant's aliases cross the wire.
        match = tenant_field(tenant_id, "*")
        found: list[Alias] = []
        async with self._guard():
            async for _, raw in self._redis.hscan_iter(self.keyspace.aliases, match, 1000):
                found.append(_parse(Alias, raw))
        return sorted(found, key=lambda a: a.alias)

    async def list_adapter_versions(self, tenant_id: str) -> list[AdapterVersion]:
        return await self._scan_tenant(self.keyspace.adapters, tenant_id, AdapterVersion)

    async def list_prompt_versions(self, tenant_id: str) -> list[PromptVersion]:
        return await self._scan_tenant(self.keyspace.prompts, tenant_id, PromptVersion)

    async def list_releases(self, tenant_id: str) -> list[Release]:
        return await self._scan_tenant(self.keyspace.releases, tenant_id, Release)

    async def page_tenants(self, cursor: int = 0, limit: int = 100) -> tuple[list[Tenant], int]:
        """One page of tenants (HSCAN order, sorted within the page) and the next cursor (0: the
        last page); a page holds about `limit` tenants."""
        async with self._guard():
            nxt, raw = await self._redis.hscan(self.keyspace.tenants, cursor, count=limit)
        assert isinstance(raw, dict)  # without no_values, HSCAN answers field -> value
        return sorted((_parse(Tenant, v) for v in raw.values()), key=lambda t: t.id), int(nxt)

    async def mutate_alias(
        self,
        tenant_id: str,
        alias: str,
        *,
        expected_revision: int | None,
        change: Callable[[Alias], Alias],
        action: str,
        reason: str = "",
        actor: str,
    ) -> Alias:
        """Read, apply the pure `change`, compare-and-set on the revision read.

        A stale `expected_revision` or a lost race raises RevisionConflict; a new alias naming a
        release that does not exist (for this tenant and alias) raises InvalidRollout.
        """
        check_name(tenant_id, "tenant id")
        check_name(alias, "alias")
        ks = self.keyspace
        fld = tenant_field(tenant_id, alias)
        async with self._guard():
            raw = await self._hget(ks.aliases, fld)
            if raw is None:
                raise NotFound(f"model {alias!r} of tenant {tenant_id!r} not found")
            old = _parse(Alias, raw)
            if expected_revision is not None and expected_revision != old.revision:
                raise RevisionConflict(
                    f"model {alias!r} is at revision {old.revision}, not {expected_revision}"
                )
            new = change(old)
            if (new.tenant, new.alias) != (old.tenant, old.alias):
                raise InvalidRollout("a change may not move an alias to another tenant or name")
            if new.revision != old.revision + 1:
                raise InvalidRollout("a change must advance the revision by exactly one")
            spec = WriteSpec()
            spec.require_revision(
                ks.aliases, fld, old.revision,
                RevisionConflict(f"model {alias!r} changed concurrently; reload and retry"),
            )  # fmt: skip
            for rid in {r for r in (new.stable, new.canary) if r is not None}:
                if not rollout.belongs_to(alias, rid):
                    raise InvalidRollout(f"release {rid!r} does not belong to model {alias!r}")
                await self.require_live_release(
                    spec,
                    tenant_id,
                    rid,
                    InvalidRollout(f"unknown release {rid!r} for model {alias!r}"),
                )
            spec.put(ks.aliases, fld, encode(new))
            await self._write(
                spec, actor=actor, action=action, tenant=tenant_id, target=alias,
                before=_alias_summary(old), after=_alias_summary(new), reason=reason,
            )  # fmt: skip
        return new
