"""Tenant limits in Redis: one Lua round trip to admit a request, one to settle it.

Why it is shaped this way:
- Check-then-record races are how limits leak under bursts. `limits_admit.lua` checks every limit
  and records the reservation in the same atomic step, so 100 simultaneous admissions against a
  concurrency limit of 5 hold at most 5 slots, whichever gateway process they arrive at.
- Admission reserves the worst case (prompt estimate + `max_tokens`, priced) and settlement
  (`limits_settle.lua`) replaces it with the real usage, so the admitted spend never exceeds the
  budget by more than the error of one request's prompt estimate.
- Slots are leases: a ZSET of request ids scored by expiry. The owning process extends its leases
  with its heartbeat (`limits_lease.lua`); a process that dies stops extending them and the next
  admission sweeps them (freeing the slot and the reserved estimate; the dead request's spend is
  not charged, at most `max_concurrency` requests per crash).
- Settlement is idempotent per request id (tombstones kept one hour), so a settle whose answer was
  lost can be replayed by the gateway's reconciliation without charging twice.
- Time comes from Redis (`TIME`), so the windows of several gateway hosts agree.
- Every call has a hard timeout; an unreachable, frozen or slow Redis raises `LimitsUnavailable`
  and the gateway falls back to its local share of the limits.
- Admissions and settlements issued in the same event-loop tick share one pipelined round trip
  (`registry/limits_batch.py`): each script still runs atomically by itself, so the limits stay as
  exact as with one call each; the pipeline has the hard timeout, and its failure is every
  call's failure. `settle_many` hands a whole batch of settlements in at once.

Windows: requests and tokens per minute use a sliding window of 60 one-second buckets (exact to
the second, memory bounded by 60 fields per tenant). Budgets use calendar periods in UTC: `day`
resets at 00:00 UTC, `month` at 00:00 UTC on the first day of the month.

Key layout: `registry/keyspace.py`.

    store = LimitStore(redis, timeout=0.25)
    quota = Quota.from_limits(tenant.limits)
    remaining = await store.admit("acme", quota, "req-1", tokens=300, cost=0.0004)
    ...
    await store.settle("acme", quota.period, "req-1", tokens=120, cost=0.0002)
    await store.settle_many([Settlement("acme", "month", "req-2", 80, 0.0001), ...])
"""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from registry.compact import LimitsRec
from registry.errors import RegistryError, RegistryUnavailable
from registry.keyspace import DEFAULT_PREFIX, Keyspace, LimitKeys
from registry.limits_batch import ScriptBatcher
from registry.models import Limits

Period = Literal["day", "month"]
LimitCode = Literal["rate_limited", "concurrency_limited", "budget_exceeded"]

WINDOW_S = 60
SETTLED_TTL_S = 3600
SPEND_RETENTION_S = 7 * 86400  # keep a finished period readable for a week


class LimitExceeded(RegistryError):
    """A limit refused the request; `code` says which, `retry_after` when to try again."""

    def __init__(self, code: LimitCode, retry_after: float, remaining: Remaining) -> None:
        super().__init__(_MESSAGES[code])
        self.code = code
        self.retry_after = retry_after
        self.remaining = remaining


class LimitsUnavailable(RegistryUnavailable):
    """Redis could not be asked in time; the caller applies its local fallback."""


_MESSAGES: dict[str, str] = {
    "rate_limited": "Rate limit reached for requests or tokens per minute; retry later.",
    "concurrency_limited": "Too many concurrent requests for this tenant; retry shortly.",
    "budget_exceeded": "The tenant's spend budget for this period is exhausted.",
}


@dataclass(frozen=True, slots=True)
class Quota:
    """The enforced part of `Limits` (`max_tokens` is checked by the request filter)."""

    max_concurrency: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget: float | None = None
    period: Period = "month"

    @classmethod
    def from_limits(cls, limits: Limits | LimitsRec) -> Quota:
        budget = limits.budget
        return cls(
            max_concurrency=limits.max_concurrency,
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            budget=budget.amount if budget is not None else None,
            period=budget.period if budget is not None else "month",
        )

    @property
    def unlimited(self) -> bool:
        return (
            self.max_concurrency is None
            and self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.budget is None
        )

    @property
    def tracks_tokens(self) -> bool:
        return self.tokens_per_minute is not None or self.budget is not None


@dataclass(frozen=True, slots=True)
class Remaining:
    """What is left after an admission (or at refusal), for the x-ratelimit-* headers."""

    requests_used: int = 0
    requests_reset_s: float = 0.0
    tokens_used: int = 0
    tokens_reset_s: float = 0.0
    spent: float = 0.0
    reserved: float = 0.0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Settlement:
    """One settlement for `LimitStore.settle_many` (see `LimitStore.settle`)."""

    scope: str
    period: Period
    request_id: str
    tokens: int
    cost: float


@dataclass(frozen=True, slots=True)
class Usage:
    """A tenant's current usage (admin view); `period_id` names the budget period."""

    in_flight: int
    requests_last_minute: int
    tokens_last_minute: int
    spent: float
    reserved: float
    period_id: str
    period_reset_s: float


def period_window(period: Period, now: float) -> tuple[str, float]:
    """The budget period containing `now` (UTC): its id and the seconds until it ends."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return f"d{moment:%Y%m%d}", start.timestamp() + 86400 - now
    days = calendar.monthrange(moment.year, moment.month)[1]
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return f"m{moment:%Y%m}", start.timestamp() + days * 86400 - now


def _script(name: str) -> str:
    return resources.files("registry").joinpath(name).read_text()


def _num(raw: Any) -> float:
    return float(raw.decode() if isinstance(raw, bytes) else raw)


def _unavailable(timeout: float, exc: BaseException) -> BaseException:
    """What a caller raises when the round trip carrying its call failed (see `_guard`)."""
    if isinstance(exc, TimeoutError):
        return LimitsUnavailable(f"limits store timed out after {timeout}s")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        return LimitsUnavailable(f"limits store unreachable: {type(exc).__name__}")
    if isinstance(exc, ResponseError):
        return LimitsUnavailable(f"limits store refused: {type(exc).__name__}")
    if isinstance(exc, asyncio.CancelledError):
        return LimitsUnavailable("limits store call cancelled")
    return exc


class LimitStore:
    """Admission, settlement, usage and heartbeat against Redis; see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        *,
        timeout: float = 0.25,
        prefix: str = DEFAULT_PREFIX,
        lease_s: float = 30.0,
        window_s: int = WINDOW_S,
        clock: Any = time.time,
    ) -> None:
        self._redis = redis
        self._timeout = timeout
        self.prefix = prefix
        self._keyspace = Keyspace(prefix)
        self.lease_s = lease_s
        self._window = window_s
        self._clock = clock
        self._batch = ScriptBatcher(
            redis, timeout=timeout, wrap=lambda exc: _unavailable(timeout, exc)
        )
        self._admit = ScriptBatcher.script(_script("limits_admit.lua"))
        self._settle = ScriptBatcher.script(_script("limits_settle.lua"))
        self._periods: dict[str, tuple[str, float, float]] = {}  # period -> id, from, until
        self._usage = redis.register_script(_script("limits_usage.lua"))
        self._lease = redis.register_script(_script("limits_lease.lua"))

    def keys(self, scope: str) -> LimitKeys:
        return self._keyspace.limits(scope)

    @property
    def gateways_key(self) -> str:
        return self._keyspace.limit_gateways

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except TimeoutError as exc:
            raise LimitsUnavailable(f"limits store timed out after {self._timeout}s") from exc
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise LimitsUnavailable(f"limits store unreachable: {type(exc).__name__}") from exc
        except ResponseError as exc:  # e.g. a restarting server answering LOADING
            raise LimitsUnavailable(f"limits store refused: {type(exc).__name__}") from exc

    def _spend_ttl(self, reset_s: float) -> int:
        return int(reset_s) + SPEND_RETENTION_S

    async def admit(
        self,
        scope: str,
        quota: Quota,
        request_id: str,
        *,
        tokens: int,
        cost: float,
        held_outside: int = 0,
    ) -> Remaining:
        """Reserve a slot, one request, `tokens` and `cost`; raises LimitExceeded or
        LimitsUnavailable. Admitting the same request id twice holds one reservation.
        `held_outside`: requests the caller admitted while Redis was away and still holds; they
        count against the concurrency limit."""
        k = self.keys(scope)
        period_id, reset_s = self._period(quota.period)
        budget = quota.budget if quota.budget is not None else -1.0
        keys = [k.slots, k.reservations, k.requests, k.tokens, k.spend(period_id)]
        args = [
            request_id,
            int(self.lease_s * 1000),
            quota.max_concurrency or 0,
            quota.requests_per_minute or 0,
            quota.tokens_per_minute or 0,
            max(int(tokens), 0),
            repr(float(budget)),
            repr(max(float(cost), 0.0)),
            self._spend_ttl(reset_s),
            max(1, int(reset_s + 0.999)),
            self._window,
            max(int(held_outside), 0),
        ]
        out = (await self._batch.submit([(self._admit, keys, args)]))[0]
        if isinstance(out, ResponseError):
            raise _unavailable(self._timeout, out) from out
        ok, code, retry = int(out[0]), out[1], _num(out[2])
        remaining = Remaining(
            requests_used=int(out[3]),
            requests_reset_s=_num(out[4]),
            tokens_used=int(out[5]),
            tokens_reset_s=_num(out[6]),
            spent=_num(out[7]),
            reserved=_num(out[8]),
            in_flight=int(out[9]),
        )
        if not ok:
            text = code.decode() if isinstance(code, bytes) else str(code)
            if text not in _MESSAGES:
                raise LimitsUnavailable(f"unexpected admission answer {text!r}")
            limit_code: LimitCode = text  # type: ignore[assignment]
            raise LimitExceeded(limit_code, retry, remaining)
        return remaining

    async def settle(
        self, scope: str, period: Period, request_id: str, *, tokens: int, cost: float
    ) -> int:
        """Replace the reservation by the real usage and free the slot (tokens=0, cost=0 for a
        request that never reached the engine). Returns 1 settled, 0 charged without a
        reservation (expired, or admitted by a local fallback), 2 already settled."""
        (out,) = await self.settle_many([Settlement(scope, period, request_id, tokens, cost)])
        if isinstance(out, LimitsUnavailable):
            raise out
        return out

    async def settle_many(self, items: Sequence[Settlement]) -> list[int | LimitsUnavailable]:
        """`settle` for many requests in one round trip: per item its answer, or the
        LimitsUnavailable of a script that failed on it alone (replay that one later). Raises
        LimitsUnavailable when the round trip itself failed (replay them all)."""
        if not items:
            return []
        calls = []
        for item in items:
            k = self.keys(item.scope)
            period_id, reset_s = self._period(item.period)
            keys = [k.slots, k.reservations, k.tokens, k.spend(period_id), k.settled]
            args = [
                item.request_id,
                max(int(item.tokens), 0),
                repr(max(float(item.cost), 0.0)),
                self._spend_ttl(reset_s),
                self._window,
            ]
            calls.append((self._settle, keys, args))
        replies = await self._batch.submit(calls)
        out: list[int | LimitsUnavailable] = []
        for reply in replies:
            if isinstance(reply, ResponseError):
                error = _unavailable(self._timeout, reply)
                assert isinstance(error, LimitsUnavailable)
                out.append(error)
            else:
                out.append(int(reply))
        return out

    def _period(self, period: Period) -> tuple[str, float]:
        """`period_window` at the store's clock, computed once per period (not per call)."""
        now = self._clock()
        cached = self._periods.get(period)
        if cached is None or not cached[1] <= now < cached[2]:
            period_id, reset_s = period_window(period, now)
            cached = (period_id, now, now + reset_s)
            self._periods[period] = cached
        return cached[0], cached[2] - now

    async def usage(self, scope: str, period: Period) -> Usage:
        k = self.keys(scope)
        period_id, reset_s = period_window(period, self._clock())
        async with self._guard():
            out = await self._usage(
                keys=[k.slots, k.requests, k.tokens, k.spend(period_id)], args=[self._window]
            )
        return Usage(
            in_flight=int(out[0]),
            requests_last_minute=int(out[1]),
            tokens_last_minute=int(out[2]),
            spent=_num(out[3]),
            reserved=_num(out[4]),
            period_id=period_id,
            period_reset_s=reset_s,
        )

    async def heartbeat(
        self, process_id: str, ttl_s: float, held: Mapping[str, Sequence[str]]
    ) -> int:
        """Announce this process for `ttl_s`, extend the leases of the requests it holds
        (scope -> request ids) and return how many gateway processes are alive."""
        keys = [self.gateways_key]
        args: list[Any] = [process_id, int(ttl_s * 1000), int(self.lease_s * 1000)]
        for scope, ids in held.items():
            if not ids:
                continue
            k = self.keys(scope)
            keys += [k.slots, k.reservations]
            args += [len(ids), *ids]
        async with self._guard():
            out = await self._lease(keys=keys, args=args)
        return max(int(out), 1)
