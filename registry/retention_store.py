"""The retention sweep's I/O half (the rules are registry/retention.py): read, plan off the loop,
delete each tenant's share in one guarded write. `RegistryStore` inherits it.

    counts = await store.sweep(30 * 86400)                       # now, from one process
    counts = await store.sweep_if_due(30 * 86400, every_s=3600)  # a timer on every gateway
"""

from __future__ import annotations

import asyncio

from registry import retention
from registry.errors import RevisionConflict
from registry.keyspace import last_release_field, tenant_field
from registry.redis_edge import RedisEdge
from registry.writes import WriteSpec, encode_value


class RetentionSweeps(RedisEdge):
    async def sweep(self, retention_s: float, *, actor: str = "retention") -> dict[str, int]:
        """Delete what nothing can reach any more and is older than `retention_s` (rules in
        registry/retention.py); each tenant's share is one guarded write with its audit entry.
        A tenant whose records changed meanwhile is left for the next sweep. Returns counts."""
        ks = self.keyspace
        now = self._clock()
        async with self._guard(self._load_timeout), self._redis.pipeline(transaction=True) as pipe:
            for name in (ks.keys, ks.adapters, ks.prompts, ks.releases, ks.aliases, ks.seq):
                pipe.hgetall(name)
            keys, adapters, prompts, releases, aliases, seq = await pipe.execute()
        plans = await asyncio.to_thread(
            retention.plan, now, retention_s, keys=keys, adapters=adapters, prompts=prompts,
            releases=releases, aliases=aliases, seq=seq,
        )  # fmt: skip
        counts = {"keys": 0, "releases": 0, "adapters": 0, "prompts": 0, "skipped_tenants": 0}
        for sweep in plans:
            try:
                await self._sweep_tenant(sweep, actor)
            except RevisionConflict:
                counts["skipped_tenants"] += 1
                continue
            for name in ("keys", "releases", "adapters", "prompts"):
                counts[name] += len(getattr(sweep, name))
        return counts

    async def sweep_if_due(self, retention_s: float, every_s: float) -> dict[str, int] | None:
        """Sweep unless another process did within `every_s` (a lease in Redis): any number of
        gateways may call this on a timer and the fleet sweeps once per period."""
        async with self._guard():
            took = await self._redis.set(
                self.keyspace.retention_lease, "1", nx=True, px=max(1, int(every_s * 1000))
            )
        return await self.sweep(retention_s) if took else None

    async def _sweep_tenant(self, sweep: retention.TenantSweep, actor: str) -> None:
        ks = self.keyspace
        changed = RevisionConflict(f"tenant {sweep.tenant!r} changed during the sweep")
        spec = WriteSpec()
        for key_hmac, key_id, raw in sweep.keys:
            spec.require_equals(ks.keys, key_hmac, raw, changed)
            spec.delete(ks.keys, key_hmac)
            spec.delete(ks.key_ids, tenant_field(sweep.tenant, key_id))
        for fld, raw in sweep.aliases.items():
            spec.require_equals(ks.aliases, fld, raw, changed)  # it may not route there again
        if sweep.adapters or sweep.prompts:  # no release may name a version deleted here
            newest = last_release_field(sweep.tenant)
            spec.require_unchanged(ks.seq, newest, sweep.newest_release, changed)
        for hash_name, fields in (
            (ks.releases, sweep.releases), (ks.adapters, sweep.adapters),
            (ks.prompts, sweep.prompts),
        ):  # fmt: skip
            for fld in fields:
                spec.delete(hash_name, fld)
        gone = {
            "keys": [key_id for _, key_id, _ in sweep.keys], "releases": sweep.releases,
            "adapters": sweep.adapters, "prompts": sweep.prompts,
        }  # fmt: skip
        async with self._guard():
            await self._write(
                spec, actor=actor, action="retention_sweep", tenant=sweep.tenant,
                target=sweep.tenant, before=encode_value(gone),
            )  # fmt: skip
