"""RedisEdge: the registry's bounded Redis calls, its one write path and its whole-state reads.

Why it is shaped this way:
- Every call has a hard timeout (`asyncio.timeout`, default 0.5 s) and turns connection errors and
  timeouts into RegistryUnavailable: a frozen Redis must not freeze the admin API.
- Every write is one call of `write.lua` (see registry/writes.py): preconditions, the write, the
  epoch INCR, the audit XADD and the invalidation PUBLISH happen atomically or not at all, so a
  rejected request writes nothing and every acknowledged write is audited and announced.

Redis configuration the registry needs (the demo and the tests start redis-server this way):
- `appendonly yes`: the registry is the source of truth, not a cache; RDB snapshots alone lose the
  writes since the last save, and a restart that lost writes would also rewind the epoch.
- `appendfsync always` fsyncs before acknowledging each write (no acknowledged write lost, a few
  ms per write, fine for admin traffic); `everysec` is faster but a crash may lose up to ~1 s of
  acknowledged writes. The snapshot watcher detects the epoch going backwards and keeps the newer
  snapshot (`regressed`) rather than silently serving older data.
- `maxmemory-policy noeviction`: evicting a tenant or key hash would silently delete tenants;
  with noeviction Redis refuses writes instead (RegistryUnavailable-like errors), never loses data.

The operations (tenants, keys, versions, releases, aliases) are `registry.store.RegistryStore`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from registry.errors import NotFound, RegistryUnavailable
from registry.keyspace import Keyspace
from registry.refs import check_name
from registry.state import RegistryState, parse_state
from registry.writes import WriteSpec


def text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisEdge:
    """Bounded calls (`_guard`), the write path (`_write`), whole-state reads, audit, health."""

    def __init__(
        self,
        redis: Redis,
        secret: bytes,
        *,
        timeout: float = 0.5,
        keyspace: Keyspace | None = None,
        clock: Callable[[], float] = time.time,
        audit_maxlen: int = 100_000,
    ) -> None:
        self._redis = redis
        self._secret = secret
        self._timeout = timeout
        self.keyspace = keyspace or Keyspace()
        self._clock = clock
        self._audit_maxlen = audit_maxlen
        lua = resources.files("registry").joinpath("write.lua").read_text()
        self._script = redis.register_script(lua)

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py may turn our caller's cancellation into a connection error; a
                # cancelled task must see CancelledError, or its owner can never stop it.
                raise asyncio.CancelledError from exc
            if isinstance(exc, TimeoutError):
                raise RegistryUnavailable(f"registry timed out after {self._timeout}s") from exc
            raise RegistryUnavailable(f"registry unreachable: {type(exc).__name__}") from exc

    async def _write(
        self,
        spec: WriteSpec,
        *,
        actor: str,
        action: str,
        tenant: str | None,
        target: str,
        before: str = "",
        after: str = "",
        reason: str = "",
    ) -> str:
        """Run write.lua; returns the allocated number ("" if none) or raises the failed check."""
        ks = self.keyspace
        audit = [
            "actor", actor, "action", action, "tenant", tenant or "", "target", target,
            "before", before, "after", after, "reason", reason, "time", repr(self._clock()),
        ]  # fmt: skip
        keys = [
            ks.epoch, ks.audit, ks.audit_of(tenant) if tenant else ks.audit, ks.audit_head,
            *spec.hashes,
        ]  # fmt: skip
        args: list[bytes | str | int] = [
            spec.to_json(audit), ks.channel, self._audit_maxlen, "1" if tenant else "0",
        ]  # fmt: skip
        result = await self._script(keys=keys, args=args)
        status = text(result[0])
        if status != "ok":
            raise spec.failures[int(result[1]) - 1]
        return text(result[1])

    async def _hget(self, key: str, fld: str) -> bytes | str | None:
        raw: bytes | str | None = await self._redis.hget(key, fld)
        return raw

    def _tenant_exists(self, spec: WriteSpec, tenant_id: str) -> None:
        spec.require_present(
            self.keyspace.tenants, tenant_id, NotFound(f"tenant {tenant_id!r} not found")
        )

    # -- audit, state, health -------------------------------------------------------------------

    async def audit(self, tenant_id: str | None = None, count: int = 100) -> list[dict[str, Any]]:
        """Newest first. `before`/`after` are decoded JSON (None when empty)."""
        stream = (
            self.keyspace.audit
            if tenant_id is None
            else self.keyspace.audit_of(check_name(tenant_id, "tenant id"))
        )
        async with self._guard():
            entries: list[Any] = await self._redis.xrevrange(stream, count=max(1, count)) or []
        out: list[dict[str, Any]] = []
        for entry_id, fields in entries:
            row: dict[str, Any] = {text(k): text(v) for k, v in fields.items()}
            for name in ("before", "after"):
                row[name] = orjson.loads(row[name]) if row.get(name) else None
            row["time"] = float(row.get("time", 0.0))
            row["epoch"] = int(row.get("epoch", 0))
            row["id"] = text(entry_id)
            out.append(row)
        return out

    async def load_state(self) -> RegistryState:
        """The whole registry at one epoch (one MULTI/EXEC, so never a torn read)."""
        ks = self.keyspace
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            pipe.get(ks.epoch)
            for name in (ks.tenants, ks.keys, ks.adapters, ks.prompts, ks.releases, ks.aliases):
                pipe.hgetall(name)
            epoch, tenants, keys, adapters, prompts, releases, aliases = await pipe.execute()
        return parse_state(
            int(epoch or 0), tenants=tenants, keys=keys, adapters=adapters, prompts=prompts,
            releases=releases, aliases=aliases,
        )  # fmt: skip

    async def epoch(self) -> int:
        async with self._guard():
            raw = await self._redis.get(self.keyspace.epoch)
        return int(raw or 0)

    async def ping(self) -> bool:
        """True if Redis answers within the timeout; never raises."""
        try:
            async with self._guard():
                return bool(await self._redis.ping())
        except RegistryUnavailable:
            return False
