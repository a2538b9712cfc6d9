"""Who may operate the registry: named admin principals, and the key lifecycle reads and writes
that are not part of issuing a key (listing, last use, suspension).

`AccessOps` is the part of `RegistryStore` for these; every write still goes through the one
audited `write.lua` path. Principal tokens are stored only as HMACs, like tenant keys; a principal
is looked up in Redis on each admin request (two HGETs), so a revocation holds on every gateway at
once and no gateway keeps admin identities in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from registry.errors import AlreadyExists, NotFound, RevisionConflict
from registry.keyspace import tenant_field
from registry.models import ApiKey, KeyLabel, Principal, Role, Tenant
from registry.redis_edge import RedisEdge, text
from registry.refs import check_name
from registry.secrets import hash_admin_token, new_admin_token
from registry.writes import WriteSpec, encode, encode_value

BOOTSTRAP_PRINCIPAL = "admin"  # the configured token's name in the audit; not creatable
_SCAN_PAGE = 1000
_RACED = RevisionConflict("changed concurrently; try again")


def _principal_view(p: Principal) -> str:
    return encode_value(
        {"name": p.name, "role": p.role, "tenants": list(p.tenants), "revoked": p.revoked,
         "expires_at": p.expires_at}
    )  # fmt: skip


class AccessOps(RedisEdge):
    """Principals, key listings, key last-use, tenant suspension."""

    # -- principals -----------------------------------------------------------------------------

    async def create_principal(
        self,
        name: str,
        *,
        role: Role,
        tenants: Iterable[str] = (),
        expires_at: float | None = None,
        actor: str,
    ) -> tuple[Principal, str]:
        """The record and the plaintext token (shown once). Names are never reused, a revoked
        principal's included, so an audit name always means one identity."""
        check_name(name, "principal name")
        if name == BOOTSTRAP_PRINCIPAL:
            raise AlreadyExists(f"principal {name!r} is the configured bootstrap token")
        scope = tuple(sorted({check_name(t, "tenant id") for t in tenants}))
        token = new_admin_token()
        record = Principal(
            name=name, role=role, tenants=scope, token_hmac=hash_admin_token(self._secret, token),
            created_at=self._clock(), expires_at=expires_at, created_by=actor,
        )  # fmt: skip
        ks = self.keyspace
        spec = WriteSpec()
        spec.require_absent(ks.principals, name, AlreadyExists(f"principal {name!r} exists"))
        for tenant in scope:
            self._tenant_exists(spec, tenant)
        spec.require_absent(ks.principal_tokens, record.token_hmac, AlreadyExists("collision"))
        spec.put(ks.principals, name, encode(record))
        spec.put(ks.principal_tokens, record.token_hmac, name)
        async with self._guard():
            await self._write(
                spec, actor=actor, action="create_principal", tenant=None, target=name,
                after=_principal_view(record),
            )  # fmt: skip
        return record, token

    async def list_principals(self) -> list[Principal]:
        async with self._guard():
            raw: Mapping[Any, Any] = await self._redis.hgetall(self.keyspace.principals)
        found = (Principal.model_validate(orjson.loads(v)) for v in raw.values())
        return sorted(found, key=lambda p: p.name)

    async def get_principal(self, name: str) -> Principal:
        check_name(name, "principal name")
        async with self._guard():
            raw = await self._hget(self.keyspace.principals, name)
        if raw is None:
            raise NotFound(f"principal {name!r} not found")
        return Principal.model_validate(orjson.loads(raw))

    async def revoke_principal(self, name: str, *, actor: str) -> Principal:
        """Idempotent; the name stays taken."""
        old = await self.get_principal(name)
        if old.revoked:
            return old
        new = old.model_copy(update={"revoked": True})
        ks = self.keyspace
        spec = WriteSpec()
        spec.require_equals(ks.principals, name, encode(old), _RACED)
        spec.put(ks.principals, name, encode(new))
        async with self._guard():
            await self._write(
                spec, actor=actor, action="revoke_principal", tenant=None, target=name,
                before=_principal_view(old), after=_principal_view(new),
            )  # fmt: skip
        return new

    async def principal_for_token(self, token: str) -> Principal | None:
        """The principal a bearer token names (revoked and expired ones too: the caller decides)."""
        token_hmac = hash_admin_token(self._secret, token)
        ks = self.keyspace
        async with self._guard():
            name = await self._hget(ks.principal_tokens, token_hmac)
            raw = None if name is None else await self._hget(ks.principals, text(name))
        if raw is None:
            return None
        record = Principal.model_validate(orjson.loads(raw))
        return record if record.token_hmac == token_hmac else None

    # -- keys -----------------------------------------------------------------------------------

    async def list_keys(self, tenant_id: str) -> list[tuple[ApiKey, KeyLabel]]:
        """A tenant's keys with their labels, revoked ones included, oldest first (HSCAN of the
        key-id index)."""
        check_name(tenant_id, "tenant id")
        ks = self.keyspace
        hmacs: list[str] = []
        async with self._guard():
            async for _field, value in self._redis.hscan_iter(
                ks.key_ids, match=tenant_field(tenant_id, "*"), count=_SCAN_PAGE
            ):
                hmacs.append(text(value))
            raws: list[Any] = await self._redis.hmget(ks.keys, hmacs) if hmacs else []
            labels: list[Any] = await self._redis.hmget(ks.key_labels, hmacs) if hmacs else []
        keys = [
            (ApiKey.model_validate(orjson.loads(r)),
             KeyLabel() if label is None else KeyLabel.model_validate(orjson.loads(label)))
            for r, label in zip(raws, labels, strict=True)
            if r is not None
        ]  # fmt: skip
        return sorted(keys, key=lambda k: (k[0].created_at, k[0].key_id))

    async def key_last_seen(self, hmacs: list[str]) -> dict[str, int]:
        """Last use of each key, as a unix minute (keys never seen are left out)."""
        if not hmacs:
            return {}
        async with self._guard():
            raws: list[Any] = await self._redis.hmget(self.keyspace.key_seen, hmacs)
        return {h: int(r) for h, r in zip(hmacs, raws, strict=True) if r is not None}

    async def record_key_uses(self, minutes: Mapping[str, int]) -> None:
        """One HSET for a batch of key HMAC -> minute (not audited: not a registry change)."""
        if minutes:
            async with self._guard():
                batch: dict[Any, Any] = dict(minutes)
                await self._redis.hset(self.keyspace.key_seen, mapping=batch)

    # -- tenants --------------------------------------------------------------------------------

    async def set_suspended(self, tenant_id: str, suspended: bool, *, actor: str) -> Tenant:
        check_name(tenant_id, "tenant id")
        ks = self.keyspace
        async with self._guard():
            raw = await self._hget(ks.tenants, tenant_id)
        if raw is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        old = Tenant.model_validate(orjson.loads(raw))
        new = old.model_copy(update={"suspended": suspended})
        if new == old:
            return old
        spec = WriteSpec()
        spec.require_equals(ks.tenants, tenant_id, text(raw), _RACED)
        spec.put(ks.tenants, tenant_id, encode(new))
        async with self._guard():
            await self._write(
                spec, actor=actor, action="suspend_tenant" if suspended else "resume_tenant",
                tenant=tenant_id, target=tenant_id, before=text(raw), after=encode(new),
            )  # fmt: skip
        return new

    # -- audit export ---------------------------------------------------------------------------

    @property
    def audit_retention(self) -> int:
        """Entries each audit stream keeps (Redis trims the oldest past about this many)."""
        return self._audit_maxlen

    async def audit_since(
        self, after: str | None, count: int, tenant_id: str | None = None
    ) -> list[tuple[str, list[tuple[str, str]]]]:
        """Up to `count` audit entries after stream id `after` (None: from the oldest kept),
        oldest first, each as (id, fields in stream order): what the chain is computed over."""
        ks = self.keyspace
        stream = ks.audit if tenant_id is None else ks.audit_of(check_name(tenant_id, "tenant id"))
        start = "-" if not after else "(" + after
        async with self._guard():
            entries: list[Any] = (
                await self._redis.xrange(stream, min=start, count=max(1, count)) or []
            )
        return [(text(i), [(text(k), text(v)) for k, v in fields.items()]) for i, fields in entries]
