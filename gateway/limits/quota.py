"""The pure side of tenant limits: estimates, x-ratelimit-* headers, and the local fallback's
windows and verdict (what one gateway process may admit on its share while Redis is away).

No I/O and no clock of its own: `gateway.limits.limiter.Limiter` passes the time in.
"""

from __future__ import annotations

import calendar
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from registry.limits import Period, Quota, Remaining, period_window

Refusal = tuple[Literal["rate_limited", "concurrency_limited", "budget_exceeded"], float]


def estimate_prompt_tokens(messages: Iterable[dict[str, Any]]) -> int:
    """Upper-ish estimate without a tokenizer in the gateway (see the module docstring)."""
    total = 3
    for message in messages:
        total += 4
        content = message.get("content")
        if isinstance(content, str):
            total += (len(content.encode()) + 2) // 3
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += (len(part["text"].encode()) + 2) // 3
    return total


def format_reset(seconds: float) -> str:
    """OpenAI's duration style for x-ratelimit-reset-*: "250ms", "12s", "1m30s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    whole = int(seconds + 0.999)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def ratelimit_headers(quota: Quota, remaining: Remaining) -> dict[str, str]:
    """x-ratelimit-* headers for the limits that are set (none for an unlimited tenant)."""
    headers: dict[str, str] = {}
    if quota.requests_per_minute is not None:
        rpm = quota.requests_per_minute
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, rpm - remaining.requests_used))
        headers["x-ratelimit-reset-requests"] = format_reset(remaining.requests_reset_s)
    if quota.tokens_per_minute is not None:
        tpm = quota.tokens_per_minute
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, tpm - remaining.tokens_used))
        headers["x-ratelimit-reset-tokens"] = format_reset(remaining.tokens_reset_s)
    return headers


def period_seconds(period: Period, now: float) -> float:
    if period == "day":
        return 86400.0
    moment = datetime.fromtimestamp(now, tz=UTC)
    return calendar.monthrange(moment.year, moment.month)[1] * 86400.0


class Window:
    """A sliding window of one-second buckets, the in-process twin of the Redis one."""

    __slots__ = ("_buckets", "_span")

    def __init__(self, span_s: int = 60) -> None:
        self._span = span_s
        self._buckets: deque[list[int]] = deque()

    def _trim(self, now_s: int) -> None:
        while self._buckets and self._buckets[0][0] <= now_s - self._span:
            self._buckets.popleft()

    def add(self, now_s: int, n: int) -> None:
        self._trim(now_s)
        if self._buckets and self._buckets[-1][0] == now_s:
            self._buckets[-1][1] = max(0, self._buckets[-1][1] + n)
        else:
            self._buckets.append([now_s, max(0, n)])

    def total(self, now_s: int) -> int:
        self._trim(now_s)
        return sum(b[1] for b in self._buckets)

    def reset_s(self, now_s: int) -> float:
        self._trim(now_s)
        return float(self._buckets[0][0] + self._span - now_s) if self._buckets else 0.0

    def wait_for(self, now_s: int, need: int, limit: int) -> float:
        total = self.total(now_s)
        freed = 0
        for sec, n in self._buckets:
            freed += n
            if total - freed + need <= limit:
                return float(sec + self._span - now_s)
        return float(self._span)


@dataclass
class LocalCounts:
    """This process's view of one tenant: always kept, enforced only while Redis is away."""

    in_flight: int = 0
    requests: Window = field(default_factory=Window)
    tokens: Window = field(default_factory=Window)
    budget_left: float | None = None  # at the last answer from Redis
    degraded_reserved: float = 0.0
    degraded_spent: float = 0.0
    local_held: int = 0  # admitted by the fallback and still in flight: Redis does not see them


def local_admission(
    quota: Quota, local: LocalCounts, gateways: int, now: float, tokens: int, cost: float
) -> tuple[Remaining, Refusal | None]:
    """This process's share of every limit (`limit // gateways`, the budget left / gateways):
    the usage to report, and the refusal with its retry-after, or None to admit."""
    n = max(1, gateways)
    now_s = int(now)
    req_used = local.requests.total(now_s)
    tok_used = local.tokens.total(now_s)
    remaining = Remaining(
        requests_used=req_used * n,
        requests_reset_s=local.requests.reset_s(now_s),
        tokens_used=tok_used * n,
        tokens_reset_s=local.tokens.reset_s(now_s),
        in_flight=local.in_flight,
    )
    if quota.max_concurrency is not None and local.in_flight >= max(1, quota.max_concurrency // n):
        return remaining, ("concurrency_limited", 1.0)
    if quota.requests_per_minute is not None:
        share = max(1, quota.requests_per_minute // n)
        if req_used + 1 > share:
            return remaining, ("rate_limited", local.requests.wait_for(now_s, 1, share))
    if quota.tokens_per_minute is not None:
        share = max(1, quota.tokens_per_minute // n)
        if tok_used + tokens > share:
            retry = 60.0 if tokens > share else local.tokens.wait_for(now_s, tokens, share)
            return remaining, ("rate_limited", retry)
    if quota.budget is not None:
        left = local.budget_left if local.budget_left is not None else quota.budget
        if local.degraded_spent + local.degraded_reserved + cost > max(0.0, left) / n:
            return remaining, ("budget_exceeded", period_window(quota.period, now)[1])
    return remaining, None
