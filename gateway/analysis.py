"""Canary analysis, the pure part: sliding windows of request outcomes and the verdict over them.

Why in-process windows and not Prometheus: the decision must not depend on a scrape pipeline being
up, and the hot path must stay free of I/O. `Windows.observe` is a dict lookup and a deque append
(about a microsecond); every judgement (`decide`) runs off the hot path in the guard loop
(gateway/canary.py). Each gateway process judges its own traffic; the registry's compare-and-set
makes sure only one of several processes that reach the same verdict acts on it.

Windows are keyed by (tenant, alias, arm, release): a new canary release starts with an empty
window, and samples of a release that left the alias are pruned.

    windows = Windows(CanaryConfig())
    windows.observe("acme", "support", "canary", "support-r2", "ok", 0.12, False, True)
    stable = windows.stats(("acme", "support", "stable", "support-r1"), now=time.monotonic())
    canary = windows.stats(("acme", "support", "canary", "support-r2"), now=time.monotonic())
    decision = decide(stable, canary, release.thresholds)
    if decision.action == "rollback": ...   # decision.reason has the numbers
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from registry.models import Thresholds

WindowKey = tuple[str, str, str, str]  # tenant, alias, arm, release


class CanaryConfig(BaseModel):
    """Guard settings (`LORAGATE_CANARY='{"window_s": 60}'`); thresholds live on each release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    interval_s: float = Field(default=1.0, gt=0)
    window_s: float = Field(default=300.0, gt=0)
    max_samples: int = Field(default=2000, ge=10)  # per (tenant, alias, arm, release)
    # Auto-promotion (off by default): after `promote_min_requests` clean canary requests in the
    # window, with both arms above the minimum sample and nothing exceeded, the canary is promoted.
    auto_promote: bool = False
    promote_min_requests: int = Field(default=200, ge=1)


class Outcome(NamedTuple):
    at: float  # monotonic seconds
    failed: bool  # a server-side failure (5xx class): the release's fault, not the client's
    latency_s: float
    refusal: bool
    schema_violation: bool


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


def p95(values: Iterable[float]) -> float | None:
    """Nearest-rank 95th percentile (no interpolation: the value some request actually saw)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarize(outcomes: Iterable[Outcome]) -> ArmStats:
    requests = errors = refusals = violations = 0
    latencies: list[float] = []
    for o in outcomes:
        requests += 1
        errors += o.failed
        refusals += o.refusal
        violations += o.schema_violation
        if not o.failed:
            latencies.append(o.latency_s)
    return ArmStats(requests, errors, refusals, violations, p95(latencies))


@dataclass(frozen=True)
class Decision:
    action: Literal["wait", "hold", "rollback", "promote"]
    stable: ArmStats
    canary: ArmStats
    exceeded: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """The triggering numbers, for the audit log and the guard's log line."""
        s, c = self.stable, self.canary
        head = "; ".join(self.exceeded) if self.exceeded else "all within thresholds"
        return (
            f"canary guard: {head} "
            f"(canary n={c.requests} errors={c.errors} refusals={c.refusals} "
            f"schema_violations={c.schema_violations} p95={_ms(c.p95_s)}; "
            f"stable n={s.requests} errors={s.errors} refusals={s.refusals} "
            f"schema_violations={s.schema_violations} p95={_ms(s.p95_s)})"
        )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f}ms"


def decide(
    stable: ArmStats,
    canary: ArmStats,
    thresholds: Thresholds,
    *,
    promote_min_requests: int | None = None,
) -> Decision:
    """Compare the arms against the canary release's thresholds.

    `wait` until both arms have `min_requests`; then `rollback` if any delta or ratio is exceeded,
    `promote` if `promote_min_requests` is given and the canary has that many clean requests,
    otherwise `hold`. A delta is canary minus stable, so a stable arm that is just as bad does not
    blame the canary.
    """
    if min(stable.requests, canary.requests) < thresholds.min_requests:
        return Decision("wait", stable, canary)
    exceeded: list[str] = []

    def check_rate(name: str, c: float, s: float, limit: float) -> None:
        if c - s > limit:
            exceeded.append(f"{name} {c:.3f} vs stable {s:.3f} (delta {c - s:.3f} > {limit:g})")

    check_rate("error rate", canary.error_rate, stable.error_rate, thresholds.max_error_rate_delta)
    if canary.p95_s is not None and stable.p95_s is not None and stable.p95_s > 0:
        ratio = canary.p95_s / stable.p95_s
        if ratio > thresholds.max_p95_ratio:
            exceeded.append(
                f"p95 {_ms(canary.p95_s)} vs stable {_ms(stable.p95_s)} "
                f"(ratio {ratio:.2f} > {thresholds.max_p95_ratio:g})"
            )
    check_rate(
        "refusal rate", canary.refusal_rate, stable.refusal_rate, thresholds.max_refusal_rate_delta
    )
    check_rate(
        "schema violation rate",
        canary.schema_violation_rate,
        stable.schema_violation_rate,
        thresholds.max_schema_violation_rate_delta,
    )
    if exceeded:
        return Decision("rollback", stable, canary, tuple(exceeded))
    if promote_min_requests is not None and canary.requests >= promote_min_requests:
        return Decision("promote", stable, canary)
    return Decision("hold", stable, canary)


class Windows:
    """Bounded deques of outcomes per (tenant, alias, arm, release); event-loop thread only."""

    def __init__(
        self, config: CanaryConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._windows: dict[WindowKey, deque[Outcome]] = {}

    def observe(
        self,
        tenant: str,
        alias: str,
        arm: str,
        release: str,
        status: str,
        duration_s: float,
        refusal: bool,
        schema_violation: bool,
    ) -> None:
        """The hot-path hook: one finished request. Client errors and cancellations say nothing
        about a release, so they are not counted."""
        if status not in ("ok", "server_error") or release == "unknown":
            return
        key = (tenant, alias, arm, release)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque(maxlen=self.config.max_samples)
        window.append(Outcome(self._clock(), status != "ok", duration_s, refusal, schema_violation))

    def stats(
        self, key: WindowKey, *, now: float | None = None, since: float | None = None
    ) -> ArmStats:
        """The window's outcomes, optionally only those at or after `since` (the guard compares
        the stable arm over the canary's lifetime only: the same traffic period)."""
        window = self._windows.get(key)
        if not window:
            return ArmStats()
        horizon = (self._clock() if now is None else now) - self.config.window_s
        while window and window[0].at < horizon:
            window.popleft()
        if since is not None and since > horizon:
            return summarize(o for o in window if o.at >= since)
        return summarize(window)

    def reset(self, key: WindowKey) -> None:
        self._windows.pop(key, None)

    def prune(self, keep: Callable[[WindowKey], bool]) -> None:
        """Drop the windows of releases that no longer serve their alias (bounded memory)."""
        for key in [k for k in self._windows if not keep(k)]:
            del self._windows[key]

    def __len__(self) -> int:
        return len(self._windows)
