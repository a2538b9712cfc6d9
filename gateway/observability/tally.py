"""Mergeable outcome counts of one arm: what each gateway publishes and the guard sums.

Why a fixed log-spaced histogram for latency: the P95 of a fleet is not the mean of each process's
P95, but histograms with the same bucket edges add up bucket by bucket. Buckets grow by 5% from
1 ms, so the reported P95 (the upper edge of the bucket holding the 95th-percentile request) is at
most 5% above the exact one; 256 buckets reach past 4 hours and only non-empty buckets are sent.

    t = Tally()
    t.add(failed=False, latency_s=0.12, refusal=False, schema_violation=False)
    fleet = Tally.merged([t, Tally.from_wire(other_gateway_payload)])
    fleet.stats().p95_s
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

BASE_S = 0.001
GROWTH = 1.05
BUCKETS = 256
_LOG_GROWTH = math.log(GROWTH)


@dataclass(frozen=True)
class ArmStats:
    requests: int = 0
    errors: int = 0
    refusals: int = 0
    schema_violations: int = 0
    p95_s: float | None = None  # over successful requests; None when there is none

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def refusal_rate(self) -> float:
        return self.refusals / self.requests if self.requests else 0.0

    @property
    def schema_violation_rate(self) -> float:
        return self.schema_violations / self.requests if self.requests else 0.0


def bucket_of(latency_s: float) -> int:
    if latency_s <= BASE_S:
        return 0
    return min(BUCKETS - 1, math.ceil(math.log(latency_s / BASE_S) / _LOG_GROWTH - 1e-9))


def upper_edge(bucket: int) -> float:
    return float(BASE_S * GROWTH**bucket)


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    refusals: int = 0
    schema_violations: int = 0
    latency: dict[int, int] = field(default_factory=dict)  # bucket -> successful requests

    def add(self, *, failed: bool, latency_s: float, refusal: bool, schema_violation: bool) -> None:
        self.requests += 1
        self.errors += failed
        self.refusals += refusal
        self.schema_violations += schema_violation
        if not failed:
            b = bucket_of(latency_s)
            self.latency[b] = self.latency.get(b, 0) + 1

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.refusals += other.refusals
        self.schema_violations += other.schema_violations
        for b, n in other.latency.items():
            self.latency[b] = self.latency.get(b, 0) + n

    @classmethod
    def merged(cls, tallies: Iterable[Tally]) -> Tally:
        out = cls()
        for t in tallies:
            out.merge(t)
        return out

    def p95(self) -> float | None:
        """Nearest rank over the buckets: the upper edge of the bucket of the ceil(0.95 n)-th."""
        total = sum(self.latency.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(0.95 * total))
        seen = 0
        for b in sorted(self.latency):
            seen += self.latency[b]
            if seen >= rank:
                return upper_edge(b)
        return None  # pragma: no cover - seen reaches total

    def stats(self) -> ArmStats:
        return ArmStats(
            self.requests, self.errors, self.refusals, self.schema_violations, self.p95()
        )

    def to_wire(self) -> list[Any]:
        return [
            self.requests, self.errors, self.refusals, self.schema_violations,
            sorted(self.latency.items()),
        ]  # fmt: skip

    @classmethod
    def from_wire(cls, raw: Any) -> Tally:
        """Inverse of `to_wire`; a malformed payload (another version) raises ValueError."""
        try:
            n, e, r, s, hist = raw
            latency = {int(b): int(c) for b, c in hist if 0 <= int(b) < BUCKETS and int(c) > 0}
            return cls(int(n), int(e), int(r), int(s), latency)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed tally: {exc}") from exc
