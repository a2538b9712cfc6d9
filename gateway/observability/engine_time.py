"""Engine-time attribution: each replica's busy seconds split among tenants by token share, once
for the whole fleet.

vLLM batches every tenant's requests on one engine, so "whose time was it" has no exact answer;
the share of tokens each series (tenant, alias, release, arm) got from the replica in an interval
is the usual chargeback rule (a GPU-hour costs the same whoever fills the batch).

Why through Redis and not per gateway: a replica is busy while *any* gateway has a request in
flight on it. Each gateway alone sees only its own requests, so per-gateway busy time summed over
the fleet counts overlapping seconds once per gateway (2 gateways: up to 2x). vLLM exports no
busy-time counter to read instead. So time is cut into periods (`period_s`, aligned on the wall
clock); when a period has closed, every gateway publishes, per replica, its busy intervals and its
token count in that period (registry/fleet.py); a little later every gateway reads all rows, takes
the *union* of the intervals (the replica's busy time as the fleet saw it) and the fleet's token
total, and exports for its own series `union * own tokens / fleet tokens`. Summed over gateways
that is the union: never more than the replica's wall-clock busy time. Busy time in a period in
which no request finished is carried to the next period that has tokens (long requests are
charged when they end). Without Redis a period is settled on this gateway's own numbers.

    et = EngineTime(period_s=5.0)
    et.add_tokens("engine-0", SeriesKey("acme", "support", "support-r2", "canary"), 240, at=now)
    et.add_busy("engine-0", [(t0, t1)])
    for cell in et.closed(now):                 # (replica, period) whose period has ended
        row = et.row(cell)                      # what this gateway publishes
        shares = et.settle(cell, fleet_rows)    # {SeriesKey: seconds}; fleet_rows None: local
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.observability.series import SeriesKey

Key = SeriesKey
Cell = tuple[str, int]  # replica, period index


@dataclass
class _Period:
    tokens: dict[SeriesKey, int] = field(default_factory=dict)
    busy: list[tuple[int, int]] = field(default_factory=list)  # ms from the period's start


def union_ms(intervals: Iterable[tuple[int, int]]) -> int:
    total = 0
    end = -1
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def encode_row(tokens: int, busy: Sequence[tuple[int, int]]) -> bytes:
    return f"{tokens}|{','.join(f'{s},{e}' for s, e in busy)}".encode()


def decode_row(raw: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Inverse of `encode_row`; ValueError on another version's row."""
    head, _, tail = raw.decode().partition("|")
    nums = [int(x) for x in tail.split(",")] if tail else []
    if len(nums) % 2:
        raise ValueError("odd interval list")
    return int(head), list(zip(nums[0::2], nums[1::2], strict=True))


class EngineTime:
    """Pure bookkeeping per (replica, period): this gateway's tokens per series and busy time."""

    def __init__(self, period_s: float = 5.0) -> None:
        self.period_s = period_s
        self._periods: dict[Cell, _Period] = {}
        self._carry: dict[str, float] = {}

    def _cell(self, replica: str, period: int) -> _Period:
        cell = self._periods.get((replica, period))
        if cell is None:
            cell = self._periods[(replica, period)] = _Period()
        return cell

    def add_tokens(self, replica: str, key: SeriesKey, tokens: int, *, at: float) -> None:
        if tokens <= 0:
            return
        per_key = self._cell(replica, math.floor(at / self.period_s)).tokens
        per_key[key] = per_key.get(key, 0) + tokens

    def add_busy(self, replica: str, intervals: Iterable[tuple[float, float]]) -> None:
        """Wall-clock busy intervals, cut at period edges (ms from each period's start)."""
        p = self.period_s
        for start, end in intervals:
            period = math.floor(start / p)
            while end > start:
                edge = (period + 1) * p
                stop = min(end, edge)
                base = period * p
                s_ms, e_ms = round((start - base) * 1000), round((stop - base) * 1000)
                if e_ms > s_ms:
                    self._cell(replica, period).busy.append((s_ms, e_ms))
                start, period = stop, period + 1

    def closed(self, now: float) -> list[Cell]:
        """Cells whose period ended before `now`, oldest first (carry runs in period order)."""
        current = math.floor(now / self.period_s)
        return sorted(c for c in self._periods if c[1] < current)

    def row(self, cell: Cell) -> bytes:
        period = self._periods.get(cell, _Period())
        return encode_row(sum(period.tokens.values()), period.busy)

    def settle(self, cell: Cell, rows: Sequence[bytes] | None) -> dict[SeriesKey, float]:
        """This gateway's share of the cell's busy seconds per series, and forget the cell.
        `rows`: every gateway's published row (this one's included); None: this gateway alone."""
        period = self._periods.pop(cell, _Period())
        replica = cell[0]
        if rows is None:
            busy_ms, total = union_ms(period.busy), sum(period.tokens.values())
        else:
            intervals: list[tuple[int, int]] = []
            total = 0
            for raw in rows:
                try:
                    tokens, busy = decode_row(raw)
                except ValueError:
                    continue
                total += tokens
                intervals += busy
            busy_ms = union_ms(intervals)
        pending = self._carry.get(replica, 0.0) + busy_ms / 1000
        if total <= 0:
            self._carry[replica] = pending
            return {}
        self._carry[replica] = 0.0
        return {key: pending * n / total for key, n in period.tokens.items()}
