"""Tenant limits on the request path: admit before any engine call, settle after the response.

    limiter = Limiter(LimitStore(redis), metrics, settings.price_for)
    await limiter.start()                        # heartbeat, lease renewal, reconciliation
    handle = await limiter.admit(tenant, request_id, prompt_tokens=42, max_tokens=64)
    try:
        ...                                      # the engine call
        limiter.settle(handle, prompt_tokens, completion_tokens, cost)
    finally:
        limiter.release(handle)                  # no-op after settle; safe in a sync `finally`

Why it is shaped this way:
- Tenants without limits cost zero Redis round trips: `admit` returns a local handle at once
  (only the in-flight gauge moves). The only Redis traffic the limiter makes for them is its
  per-process heartbeat (one call every `heartbeat_s`, not per request).
- `settle` and `release` are synchronous: they free the local state at once and schedule the
  Redis call as a tracked task, so they can run in a `finally` during cancellation, where nothing
  may be awaited any more. A failed Redis settle is queued and replayed by the heartbeat loop.
- Batching: the settlements of one event-loop tick go out in one task, and with the admissions
  of that tick in one pipelined round trip (`registry/limits_batch.py`). Each script still runs
  atomically by itself, so limits stay exact across the fleet; a failed round trip fails each of
  its calls exactly as a lone call would (fallback, give-back, replay queue).
- Local fallback: when Redis cannot be asked (down, frozen, over the timeout), each process
  enforces its share of every limit: `max(1, limit // N)` for concurrency, requests and tokens per
  minute, and `remaining / N` of the budget, where N is the number of live gateway processes last
  seen in Redis (processes heartbeat into a ZSET with a TTL; a process that never reached Redis
  assumes N = 1) and `remaining` is the budget left at the last answer from Redis (the whole budget
  if none came yet). Spend recorded while degraded is queued and charged to Redis when it returns
  (settlement is idempotent per request id, so a replay never charges twice). After a failure
  Redis is not asked again for `retry_s`, so a frozen Redis costs one timeout, not one per request.
- Estimates: prompt tokens are estimated from UTF-8 bytes (`bytes / 3`, plus a few per message),
  an overestimate for byte-level BPE on English text; completions are reserved at `max_tokens`
  (or `default_max_tokens` when the request sets none).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import msgspec
from pydantic import BaseModel

from gateway.errors import ApiError
from gateway.limits.quota import LocalCounts, local_admission, period_seconds, ratelimit_headers
from gateway.observability.metrics import GatewayMetrics, InFlight
from gateway.settings import Price
from registry.compact import AnyKey, AnyTenant
from registry.keyspace import key_scope
from registry.limits import (
    LimitExceeded,
    LimitStore,
    LimitsUnavailable,
    Period,
    Quota,
    Remaining,
    Settlement,
    period_window,
)
from registry.models import Limits

log = logging.getLogger("loragate.limits")

Mode = Literal["none", "remote", "local"]
MAX_PENDING = 100_000
REPLAY_BATCH = 256


@dataclass(eq=False)
class Reservation:
    """What one admitted request holds; `headers` are its x-ratelimit-* response headers."""

    tenant: str
    request_id: str
    quota: Quota
    mode: Mode
    tokens: int = 0
    cost: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    gauge: InFlight | None = None
    done: bool = False


@dataclass(frozen=True)
class _Pending:
    scope: str
    period: Period
    request_id: str
    tokens: int
    cost: float
    local_cost: float  # spend to take off the degraded counter once Redis has it

    @property
    def settlement(self) -> Settlement:
        return Settlement(self.scope, self.period, self.request_id, self.tokens, self.cost)


class Limiter:
    """Admission, settlement and release of tenant limits; see the module docstring."""

    def __init__(
        self,
        store: LimitStore,
        metrics: GatewayMetrics,
        price_for: Callable[[str], Price],
        *,
        default_max_tokens: int = 4096,
        heartbeat_s: float = 5.0,
        retry_s: float = 1.0,
        process_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._price_for = price_for
        self._default_max_tokens = default_max_tokens
        self._heartbeat_s = heartbeat_s
        self._retry_s = retry_s
        self.process_id = process_id or f"gw-{os.getpid()}-{os.urandom(4).hex()}"
        self._clock = clock
        self._down_until = 0.0
        self.degraded = False
        self.live_gateways = 1
        self.on_live_gateways: Callable[[int], None] | None = None  # after every count
        self._locals: dict[str, LocalCounts] = {}
        self._held: dict[str, Reservation] = {}
        self._pending: deque[_Pending] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outbox: list[_Pending] = []  # settlements of this tick, not sent yet
        self._flusher: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """First heartbeat (bounded by the store timeout), then the background loop."""
        await self.heartbeat()
        self._loop_task = asyncio.create_task(self._loop(), name="limits-heartbeat")

    async def stop(self, within_s: float = 2.0) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self.drain(within_s)

    async def drain(self, within_s: float = 2.0) -> None:
        """Wait (bounded) for the scheduled Redis settlements."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within_s)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._retry_s if self.degraded else self._heartbeat_s)
            await self.heartbeat()

    async def heartbeat(self) -> bool:
        """Announce this process, renew held leases, replay queued spend. True if Redis answered."""
        held: dict[str, list[str]] = {}
        for r in self._held.values():
            if r.mode == "remote":
                held.setdefault(r.tenant, []).append(r.request_id)
        try:
            self.live_gateways = await self._store.heartbeat(
                self.process_id, self._heartbeat_s * 3, held
            )
        except LimitsUnavailable as exc:
            self._mark_down(exc)
            return False
        if self.on_live_gateways is not None:
            self.on_live_gateways(self.live_gateways)
        self._mark_up()
        await self.reconcile()
        return True

    # -- request path ---------------------------------------------------------------------------

    async def admit(
        self, tenant: AnyTenant, request_id: str, *, prompt_tokens: int, max_tokens: int | None
    ) -> Reservation:
        """Reserve what the request may use, or raise ApiError 429 (rate_limited,
        concurrency_limited, budget_exceeded) with Retry-After and x-ratelimit-* headers."""
        quota = Quota.from_limits(tenant.limits)
        if quota.unlimited:
            return Reservation(
                tenant.id, request_id, quota, "none", gauge=self._metrics.in_flight(tenant.id)
            )
        handle = await self._admit_scope(
            tenant, tenant.id, quota, request_id, prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
        )  # fmt: skip
        handle.gauge = self._metrics.in_flight(tenant.id)
        return handle

    async def admit_key(
        self,
        tenant: AnyTenant,
        key: AnyKey,
        request_id: str,
        *,
        prompt_tokens: int,
        max_tokens: int | None,
    ) -> Reservation | None:
        """The key's own limits, on top of the tenant's (None when the key has none): the same
        scripts under the key's scope, refused with the same 429s; no metrics series of its own
        (a label per key would grow with the keys), rejections are counted under the tenant."""
        if key.limits is None:
            return None
        quota = Quota.from_limits(Limits.model_validate(_plain(key.limits)))
        if quota.unlimited:
            return None
        return await self._admit_scope(
            tenant, key_scope(key.tenant, key.key_id), quota, f"{request_id}:key",
            prompt_tokens=prompt_tokens, max_tokens=max_tokens,
        )  # fmt: skip

    async def _admit_scope(
        self,
        tenant: AnyTenant,
        scope: str,
        quota: Quota,
        request_id: str,
        *,
        prompt_tokens: int,
        max_tokens: int | None,
    ) -> Reservation:
        completion = max_tokens if max_tokens is not None else self._default_max_tokens
        price = self._price_for(tenant.plan)
        cost = price.cost(prompt_tokens, completion)
        handle = Reservation(
            scope, request_id, quota, "remote", tokens=prompt_tokens + completion, cost=cost
        )
        local = self._local(scope)
        remaining: Remaining | None = None
        if time.monotonic() >= self._down_until:
            self._held[request_id] = handle  # its lease is renewed from here on
            try:
                remaining = await self._store.admit(
                    scope,
                    quota,
                    request_id,
                    tokens=handle.tokens,
                    cost=cost,
                    held_outside=local.local_held,
                )
            except LimitExceeded as exc:
                self._held.pop(request_id, None)
                self._reject(tenant.id, quota, exc)
            except LimitsUnavailable as exc:
                self._held.pop(request_id, None)
                self._mark_down(exc)
                # A timeout may hide an admission Redis did record: give that slot back.
                self._schedule(_Pending(scope, quota.period, request_id, 0, 0.0, 0.0))
            except BaseException:
                # Cancelled mid-call: Redis may hold the slot; free it (or let its lease lapse).
                self._held.pop(request_id, None)
                handle.done = True
                self._schedule(_Pending(scope, quota.period, request_id, 0, 0.0, 0.0))
                raise
            else:
                self._mark_up()
                if quota.budget is not None and scope == tenant.id:
                    local.budget_left = quota.budget - remaining.spent - remaining.reserved
                    self._metrics.set_tenant_budget(
                        tenant.id, quota.budget, period_seconds(quota.period, self._clock())
                    )
                    self._metrics.set_tenant_spend(tenant.id, remaining.spent)
        if remaining is None:
            handle.mode = "local"
            remaining = self._admit_local(tenant.id, quota, local, handle)
            local.degraded_reserved += cost
            local.local_held += 1
        now_s = int(self._clock())
        local.in_flight += 1
        local.requests.add(now_s, 1)
        local.tokens.add(now_s, handle.tokens)
        self._held[request_id] = handle
        handle.headers = ratelimit_headers(quota, remaining)
        return handle

    def settle(
        self, handle: Reservation, prompt_tokens: int, completion_tokens: int, cost: float
    ) -> asyncio.Task[None] | None:
        """Charge the real usage and free the slot: local state at once, Redis in a tracked task
        (returned, for callers that want to await it). Idempotent."""
        if handle.done:
            return None
        handle.done = True
        if handle.gauge is not None:
            handle.gauge.release()
        if handle.mode == "none":
            return None
        tokens = max(prompt_tokens, 0) + max(completion_tokens, 0)
        self._held.pop(handle.request_id, None)
        local = self._local(handle.tenant)
        local.in_flight = max(0, local.in_flight - 1)
        local.tokens.add(int(self._clock()), tokens - handle.tokens)
        local_cost = 0.0
        if handle.mode == "local":
            local.local_held = max(0, local.local_held - 1)
            local.degraded_reserved = max(0.0, local.degraded_reserved - handle.cost)
            local.degraded_spent += cost
            local_cost = cost
            if tokens == 0 and cost <= 0:
                return None  # Redis never saw it and there is nothing to charge
        # A locally admitted request gets its own id in Redis: the id it was tried under may
        # carry a tombstone from the release of a timed-out admission.
        rid = handle.request_id if handle.mode == "remote" else f"{handle.request_id}:local"
        pending = _Pending(handle.tenant, handle.quota.period, rid, tokens, cost, local_cost)
        if handle.mode == "local":
            self._queue(pending)
            return None
        return self._schedule(pending)

    def _local(self, scope: str) -> LocalCounts:
        """This process's counts of a scope (built once: two windows are not free per request)."""
        local = self._locals.get(scope)
        if local is None:
            local = self._locals[scope] = LocalCounts()
        return local

    def _schedule(self, pending: _Pending) -> asyncio.Task[None] | None:
        """Always try: freeing a slot in Redis matters more than one background timeout. The
        settlements of one event-loop tick go out together (one task, one round trip); the task
        returned is the one carrying this settlement."""
        if self._flusher is None or self._flusher.done():  # done: cancelled before it ran
            try:
                task = asyncio.get_running_loop().create_task(self._flush(), name="limits-settle")
            except RuntimeError:  # no running loop (interpreter shutdown): replay later
                self._queue(pending)
                return None
            self._flusher = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._outbox.append(pending)
        return self._flusher

    def release(self, handle: Reservation) -> asyncio.Task[None] | None:
        """Free a request that produced nothing billable (failure before the engine, cancellation
        before any usage is known). Idempotent, synchronous, safe in `finally`."""
        return self.settle(handle, 0, 0, 0.0)

    async def _flush(self) -> None:
        # First step of the task: one loop iteration after the first settlement of the tick.
        batch, self._outbox = self._outbox, []
        self._flusher = None
        try:
            results = await self._store.settle_many([p.settlement for p in batch])
        except LimitsUnavailable as exc:
            self._mark_down(exc)
            for pending in batch:
                self._queue(pending)
            return
        except BaseException:  # cancelled (shutdown): Redis may or may not have them; replayable
            for pending in batch:
                self._queue(pending)
            raise
        for pending, result in zip(batch, results, strict=True):
            if isinstance(result, LimitsUnavailable):
                self._mark_down(result)
                self._queue(pending)

    def _queue(self, pending: _Pending) -> None:
        if len(self._pending) >= MAX_PENDING:
            log.warning("limits reconciliation queue full: dropping the oldest entry")
            self._pending.popleft()
        self._pending.append(pending)

    async def reconcile(self) -> int:
        """Replay the queued settlements while Redis answers, in order and `REPLAY_BATCH` per
        round trip; returns how many went through."""
        done = 0
        while self._pending:
            chunk = list(itertools.islice(self._pending, REPLAY_BATCH))
            try:
                results = await self._store.settle_many([p.settlement for p in chunk])
            except LimitsUnavailable:
                self._mark_down()
                break
            for pending, result in zip(chunk, results, strict=True):
                if isinstance(result, LimitsUnavailable):
                    # Stop at the first refusal; the ones after it that went through are
                    # replayed again later, and a replay is not charged twice.
                    self._mark_down(result)
                    return done
                if self._pending and self._pending[0] is pending:  # not dropped meanwhile
                    self._pending.popleft()
                local = self._locals.get(pending.scope)
                if local is not None and pending.local_cost:
                    local.degraded_spent = max(0.0, local.degraded_spent - pending.local_cost)
                    if local.budget_left is not None:
                        local.budget_left -= pending.local_cost
                done += 1
        return done

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- local fallback -------------------------------------------------------------------------

    def _admit_local(
        self, tenant: str, quota: Quota, local: LocalCounts, handle: Reservation
    ) -> Remaining:
        remaining, refusal = local_admission(
            quota, local, max(1, self.live_gateways), self._clock(), handle.tokens, handle.cost
        )
        if refusal is not None:
            self._reject(tenant, quota, LimitExceeded(refusal[0], refusal[1], remaining))
        return remaining

    def _reject(self, tenant: str, quota: Quota, exc: LimitExceeded) -> NoReturn:
        self._metrics.count_limit_rejection(tenant, exc.code)
        raise ApiError(
            exc.code,
            exc.message,
            headers=ratelimit_headers(quota, exc.remaining),
            retry_after=max(1.0, exc.retry_after),
        ) from None

    def _mark_down(self, exc: BaseException | None = None) -> None:
        if not self.degraded:
            log.warning("limits store unreachable (%s): enforcing local shares (%d gateways)",
                        exc, self.live_gateways)  # fmt: skip
        self.degraded = True
        self._down_until = time.monotonic() + self._retry_s

    def _mark_up(self) -> None:
        if self.degraded:
            log.info("limits store reachable again")
        self.degraded = False
        self._down_until = 0.0

    # -- admin view -----------------------------------------------------------------------------

    async def usage(self, tenant: AnyTenant) -> dict[str, Any]:
        """Usage and remaining quota for `GET /admin/v1/tenants/{tenant}` (Redis, else local)."""
        quota = Quota.from_limits(tenant.limits)
        period_id, reset_s = period_window(quota.period, self._clock())
        out: dict[str, Any] = {"source": "redis", "period": quota.period, "period_id": period_id}
        try:
            usage = await self._store.usage(tenant.id, quota.period)
            out.update(
                in_flight=usage.in_flight,
                requests_last_minute=usage.requests_last_minute,
                tokens_last_minute=usage.tokens_last_minute,
                spent=usage.spent,
                reserved=usage.reserved,
            )
        except LimitsUnavailable:
            local = self._locals.get(tenant.id, LocalCounts())
            now_s = int(self._clock())
            out.update(
                source="local",
                in_flight=local.in_flight,
                requests_last_minute=local.requests.total(now_s),
                tokens_last_minute=local.tokens.total(now_s),
                spent=None,
                reserved=local.degraded_reserved,
            )
        out["period_reset_s"] = round(reset_s, 3)
        out["budget"] = quota.budget
        if quota.budget is not None and out["spent"] is not None:
            out["remaining_budget"] = max(0.0, quota.budget - out["spent"] - out["reserved"])
        else:
            out["remaining_budget"] = None
        out["degraded"] = self.degraded
        out["pending_reconciliation"] = len(self._pending)
        return out


def _plain(limits: Any) -> Any:
    """A key's limits as plain data, from the snapshot's compact record or a full one."""
    return limits.model_dump() if isinstance(limits, BaseModel) else msgspec.to_builtins(limits)
