"""Retiring adapter versions, prompt versions and releases: the part of `RegistryStore` that ends
what the rest of it creates.

A retired record stays (listed with `retired_at`, its audit entries kept); no new release may name
a retired version and no alias may route to a retired release. Retiring is refused (`InUse`)
while something still uses the record:

- a release, while its alias has it as stable, canary or rollback target (`last_good`);
- a version, while a release that is not retired names it.

Why this holds across gateways: each retire reads what it depends on, decides, and writes through
`write.lua` with guards on exactly those reads, so the decision and the write are one atomic step
in Redis (a lost race is retried against the new state, never written over it):

- a release's users are its alias record (a release belongs to one alias), guarded by its bytes;
- a version's users are the tenant's releases; release records never change except by retiring
  (which only removes users), and every new release rewrites the tenant's `last_release` field in
  the same write, so guarding that field guards the whole set (the retention sweep uses the same
  guard).

The other side, in `RegistryStore.create_release` and `mutate_alias`: what they make an alias or
a release use is read, refused if retired (`Retired`) and guarded by its bytes in their write, so
a retire that lands first makes them fail rather than use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

import orjson
from pydantic import BaseModel

from registry.errors import InUse, NotFound, Retired, RevisionConflict
from registry.keyspace import last_release_field, tenant_field, version_field
from registry.models import AdapterVersion, Alias, PromptVersion, Release
from registry.redis_edge import RedisEdge, text
from registry.refs import check_name, check_release_id, parse_ref
from registry.writes import WriteSpec, encode, encode_value

R = TypeVar("R", bound=BaseModel)
V = TypeVar("V", AdapterVersion, PromptVersion)
_ATTEMPTS = 5
_SCAN_PAGE = 1000
Kind = Literal["adapter", "prompt"]


def _parse(model: type[R], raw: bytes | str) -> R:
    return model.model_validate(orjson.loads(raw))


def alias_roles(alias: Alias, release_id: str) -> list[str]:
    """How `alias` uses the release: any of stable, canary, last_good."""
    roles = [arm for arm in ("stable", "canary") if getattr(alias, arm) == release_id]
    if release_id in alias.last_good:
        roles.append("last_good")
    return roles


def _names(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class LifecycleOps(RedisEdge):
    """Retire versions and releases; the tenant-scoped scans the listings use."""

    async def _scan_tenant(self, key: str, tenant_id: str, model: type[R]) -> list[R]:
        """One tenant's full records of one kind (HSCAN MATCH: only its fields cross the wire)."""
        check_name(tenant_id, "tenant id")
        found: list[R] = []
        async with self._guard():
            async for _, raw in self._redis.hscan_iter(
                key, tenant_field(tenant_id, "*"), _SCAN_PAGE
            ):
                found.append(_parse(model, raw))
        return found

    async def retire_adapter_version(
        self, tenant_id: str, name: str, version: int, *, actor: str
    ) -> AdapterVersion:
        return await self._retire_version(
            AdapterVersion, "adapter", tenant_id, name, version, actor
        )

    async def retire_prompt_version(
        self, tenant_id: str, name: str, version: int, *, actor: str
    ) -> PromptVersion:
        return await self._retire_version(PromptVersion, "prompt", tenant_id, name, version, actor)

    async def _retire_version(
        self, model: type[V], kind: Kind, tenant_id: str, name: str, version: int, actor: str
    ) -> V:
        """Idempotent: retiring a retired version answers it without writing."""
        check_name(tenant_id, "tenant id")
        check_name(name, f"{kind} name")
        ks = self.keyspace
        hash_name = ks.adapters if kind == "adapter" else ks.prompts
        fld = version_field(tenant_id, name, version)
        ref = f"{name}@{version}"
        newest_fld = last_release_field(tenant_id)
        for _ in range(_ATTEMPTS):
            async with self._guard():
                raw = await self._hget(hash_name, fld)
                # Read before the scan: a release created after this read changes the field.
                newest = await self._hget(ks.seq, newest_fld)
            if raw is None:
                raise NotFound(f"{kind} {ref!r} of tenant {tenant_id!r} not found")
            old = _parse(model, raw)
            if old.retired_at is not None:
                return old
            releases = await self._scan_tenant(ks.releases, tenant_id, Release)
            users = sorted(
                r.id for r in releases
                if r.retired_at is None and (r.adapter if kind == "adapter" else r.prompt) == ref
            )  # fmt: skip
            if users:
                raise InUse(
                    f"{kind} {ref!r} is used by release(s) {_names(users)} that are not retired;"
                    f" retire them first{await self._alias_note(tenant_id, users)}"
                )
            raced = RevisionConflict(f"{kind} {ref!r} or the tenant's releases changed")
            spec = WriteSpec()
            spec.require_equals(hash_name, fld, text(raw), raced)
            spec.require_unchanged(
                ks.seq, newest_fld, None if newest is None else text(newest), raced
            )
            new = old.model_copy(update={"retired_at": self._clock()})
            spec.put(hash_name, fld, encode(new))
            try:
                async with self._guard():
                    await self._write(
                        spec, actor=actor, action=f"retire_{kind}_version", tenant=tenant_id,
                        target=ref, before=encode_value({"retired_at": None}),
                        after=encode_value({"retired_at": new.retired_at}),
                    )  # fmt: skip
            except RevisionConflict:
                continue
            return new
        raise RevisionConflict(f"{kind} {ref!r}: the tenant's releases kept changing; try again")

    async def _alias_note(self, tenant_id: str, release_ids: Sequence[str]) -> str:
        """`; aliases using them: chat (stable chat-r2), ...` for an InUse message."""
        wanted = set(release_ids)
        uses: list[str] = []
        aliases = await self._scan_tenant(self.keyspace.aliases, tenant_id, Alias)
        for alias in sorted(aliases, key=lambda a: a.alias):
            for rid in sorted(wanted):
                uses.extend(f"{alias.alias} ({role} {rid})" for role in alias_roles(alias, rid))
        return f"; aliases using them: {_names(uses)}" if uses else ""

    async def retire_release(self, tenant_id: str, release_id: str, *, actor: str) -> Release:
        """Idempotent: retiring a retired release answers it without writing."""
        check_name(tenant_id, "tenant id")
        check_release_id(release_id)
        ks = self.keyspace
        fld = tenant_field(tenant_id, release_id)
        for _ in range(_ATTEMPTS):
            async with self._guard():
                raw = await self._hget(ks.releases, fld)
            if raw is None:
                raise NotFound(f"release {release_id!r} of tenant {tenant_id!r} not found")
            old = _parse(Release, raw)
            if old.retired_at is not None:
                return old
            alias_fld = tenant_field(tenant_id, old.alias)
            async with self._guard():
                alias_raw = await self._hget(ks.aliases, alias_fld)
            if alias_raw is not None:
                roles = alias_roles(_parse(Alias, alias_raw), release_id)
                if roles:
                    raise InUse(
                        f"release {release_id!r} is the {' and '.join(roles)} release of model"
                        f" {old.alias!r}; move the model off it first (promote, rollback, or"
                        " let it leave the rollback list)"
                    )
            raced = RevisionConflict(f"model {old.alias!r} changed; try again")
            spec = WriteSpec()
            spec.require_equals(ks.releases, fld, text(raw), raced)
            spec.require_unchanged(
                ks.aliases, alias_fld, None if alias_raw is None else text(alias_raw), raced
            )
            new = old.model_copy(update={"retired_at": self._clock()})
            spec.put(ks.releases, fld, encode(new))
            try:
                async with self._guard():
                    await self._write(
                        spec, actor=actor, action="retire_release", tenant=tenant_id,
                        target=release_id, before=encode_value({"retired_at": None}),
                        after=encode_value({"retired_at": new.retired_at}),
                    )  # fmt: skip
            except RevisionConflict:
                continue
            return new
        raise RevisionConflict(f"model {old.alias!r} kept changing; try again")

    async def _live_record(
        self, spec: WriteSpec, hash_name: str, fld: str, what: str, missing: Exception
    ) -> None:
        """Guard `spec` on a version or release that is there and not retired (its bytes now:
        retiring is the only change such a record sees)."""
        async with self._guard():
            raw = await self._hget(hash_name, fld)
        if raw is None:
            raise missing
        if orjson.loads(raw).get("retired_at") is not None:
            raise Retired(f"{what} is retired")
        spec.require_equals(hash_name, fld, text(raw), Retired(f"{what} was retired meanwhile"))

    async def require_live_version(
        self, spec: WriteSpec, tenant_id: str, kind: Kind, ref: str
    ) -> None:
        """`spec` succeeds only while the version `ref` exists and is not retired."""
        name, version = parse_ref(ref)
        ks = self.keyspace
        await self._live_record(
            spec, ks.adapters if kind == "adapter" else ks.prompts,
            version_field(tenant_id, name, version), f"{kind} {ref!r}",
            NotFound(f"{kind} {ref!r} of tenant {tenant_id!r} not found"),
        )  # fmt: skip

    async def require_live_release(
        self, spec: WriteSpec, tenant_id: str, release_id: str, missing: Exception
    ) -> None:
        """`spec` succeeds only while the release exists and is not retired."""
        await self._live_record(
            spec, self.keyspace.releases, tenant_field(tenant_id, release_id),
            f"release {release_id!r}", missing,
        )  # fmt: skip
