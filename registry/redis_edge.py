"""RedisEdge: the registry's bounded Redis calls, its one write path and its whole-state reads.

Why it is shaped this way:
- Every call has a hard timeout (`asyncio.timeout`, default 0.5 s) and turns connection errors and
  timeouts into RegistryUnavailable: a frozen Redis must not freeze the admin API.
- Every write is one call of `write.lua` (see registry/writes.py): preconditions, the write, the
  epoch INCR, the audit XADD and the PUBLISH of the changed records happen atomically or not at
  all, so a rejected request writes nothing and every acknowledged write is audited and announced
  (gateways apply the announced records; registry/snapshot.py).

Redis configuration the registry needs (the demo and the tests start redis-server this way):
- `appendonly yes`: the registry is the source of truth, not a cache; RDB snapshots alone lose the
  writes since the last save, and a restart that lost writes would also rewind the epoch.
- `appendfsync always` fsyncs before acknowledging each write (no acknowledged write lost, a few
  ms per write, fine for admin traffic); `everysec` is faster but a crash may lose up to ~1 s of
  acknowledged writes. The snapshot watcher detects the epoch going backwards and keeps the newer
  snapshot (`regressed`) rather than silently serving older data.
- `maxmemory-policy noeviction`: evicting a tenant or key hash would silently delete tenants;
  with noeviction Redis refuses writes instead (RegistryUnavailable-like errors), never loses data.
- Behind Sentinel (`redis+sentinel://`, registry/redis_client.py): `wait_replicas` (1 by default
  there) makes each write wait (`WAIT`, on the same connection) until that many replicas hold it;
  fewer within `wait_timeout_ms` raises RegistryUnavailable (503: the write may or may not have
  happened, it was not acknowledged). Sentinel promotes the replica with the highest replication
  offset, so an acknowledged write survives the master's loss; it is lost only if the master and
  every replica that acknowledged it are lost together.

The operations (tenants, keys, versions, releases, aliases) are `registry.store.RegistryStore`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from registry.errors import NotFound, RegistryUnavailable
from registry.keyspace import Keyspace
from registry.refs import check_name
from registry.state import KINDS, RegistryState, parse_steps
from registry.writes import WriteSpec

# Refusals of a master that is failing over or lacks replicas (`min-replicas-to-write`), or of a
# node that is no longer the master: the registry is unavailable for now, not broken.
_UNAVAILABLE_REPLIES = ("NOREPLICAS", "MASTERDOWN", "READONLY")
T = TypeVar("T")


async def drive(steps: Generator[None, None, T]) -> T:
    """Run a stepwise computation (registry.state) on the event loop, yielding between steps."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            value: T = done.value
            return value
        await asyncio.sleep(0)


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
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
        load_timeout: float = 30.0,
    ) -> None:
        self._redis = redis
        self._secret = secret
        self._timeout = timeout
        self.keyspace = keyspace or Keyspace()
        self.channel = self.keyspace.channel(
            int(redis.connection_pool.connection_kwargs.get("db", 0))
        )
        self._clock = clock
        self._audit_maxlen = audit_maxlen
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        # A full load moves the whole registry (~25 MB at 10,000 tenants): its own, longer bound.
        self._load_timeout = max(timeout, load_timeout)
        lua = resources.files("registry").joinpath("write.lua").read_text()
        self._script = redis.register_script(lua)

    @asynccontextmanager
    async def _guard(self, timeout: float | None = None) -> AsyncIterator[None]:  # noqa: ASYNC109
        limit = self._timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                yield
        except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py may turn our caller's cancellation into a connection error; a
                # cancelled task must see CancelledError, or its owner can never stop it.
                raise asyncio.CancelledError from exc
            if isinstance(exc, TimeoutError):
                raise RegistryUnavailable(f"registry timed out after {limit}s") from exc
            raise RegistryUnavailable(f"registry unreachable: {type(exc).__name__}") from exc
        except ResponseError as exc:  # in a pipeline, the reply comes after "Command # n ..."
            if any(reply in str(exc) for reply in _UNAVAILABLE_REPLIES):
                raise RegistryUnavailable("registry refused the write: no writable master") from exc
            raise

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
            spec.to_json(audit), self.channel, self._audit_maxlen, "1" if tenant else "0",
        ]  # fmt: skip
        if self._wait_replicas <= 0:
            result = await self._script(keys=keys, args=args)
        else:  # WAIT counts the writes of its own connection: one pipeline, one connection
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._script(keys=keys, args=args, client=pipe)
                pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms)
                result, acked = await pipe.execute()
            if int(acked) < self._wait_replicas:
                raise RegistryUnavailable(
                    f"write reached {int(acked)} of {self._wait_replicas} replica(s) within "
                    f"{self._wait_timeout_ms} ms; not acknowledged"
                )
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

    async def load_raw(self) -> tuple[int, dict[str, Mapping[Any, Any]]]:
        """The six snapshot hashes at one epoch (one MULTI/EXEC, so never a torn read)."""
        ks = self.keyspace
        async with self._guard(self._load_timeout), self._redis.pipeline(transaction=True) as pipe:
            pipe.get(ks.epoch)
            for name in (ks.tenants, ks.keys, ks.adapters, ks.prompts, ks.releases, ks.aliases):
                pipe.hgetall(name)
            epoch, *hashes = await pipe.execute()
        return int(epoch or 0), dict(zip(KINDS, hashes, strict=True))

    async def load_state(self) -> RegistryState:
        """The whole registry at one epoch, parsed in steps that yield to the event loop."""
        epoch, raw = await self.load_raw()
        return await drive(parse_steps(epoch, raw))

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
