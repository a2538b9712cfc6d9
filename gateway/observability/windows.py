"""Canary outcome windows: sliding windows of request outcomes per arm, fed by the hot path.

Why in-process windows and not Prometheus: the decision must not depend on a scrape pipeline being
up, and the hot path must stay free of I/O. `Windows.observe` is a dict lookup and a deque append
(about a microsecond); every judgement runs off the hot path in the canary guard
(gateway/rollout/guard.py) over `Windows.stats`.

Windows are keyed by `SeriesKey` (tenant, alias, release, arm): a new canary release starts with
an empty window, and samples of a release that left the alias are pruned. Each gateway publishes
`Windows.tally` (mergeable counts and a latency histogram) for the fleet's guard
(gateway/observability/fleet.py); `Windows.stats` is the local view, with an exact P95.

    windows = Windows(CanaryConfig())
    key = SeriesKey("acme", "support", "support-r2", "canary")
    windows.observe(key, "ok", 0.12, False, True)
    canary = windows.stats(key, now=time.monotonic())
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

from gateway.observability.series import SeriesKey
from gateway.observability.tally import ArmStats, Tally
from gateway.settings import CanaryConfig

__all__ = ["ArmStats", "Outcome", "SeriesKey", "Tally", "Windows", "p95", "summarize"]


class Outcome(NamedTuple):
    at: float  # monotonic seconds
    failed: bool  # a server-side failure (5xx class): the release's fault, not the client's
    latency_s: float
    refusal: bool
    schema_violation: bool


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


class Windows:
    """Bounded deques of outcomes per series; event-loop thread only."""

    def __init__(
        self, config: CanaryConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._windows: dict[SeriesKey, deque[Outcome]] = {}

    def observe(
        self,
        key: SeriesKey,
        status: str,
        duration_s: float,
        refusal: bool,
        schema_violation: bool,
    ) -> None:
        """The hot-path hook: one finished request. Client errors and cancellations say nothing
        about a release, so they are not counted."""
        if status not in ("ok", "server_error") or key.release == "unknown":
            return
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque(maxlen=self.config.max_samples)
        window.append(Outcome(self._clock(), status != "ok", duration_s, refusal, schema_violation))

    def _outcomes(
        self, key: SeriesKey, now: float | None, since: float | None
    ) -> Iterable[Outcome]:
        window = self._windows.get(key)
        if not window:
            return ()
        horizon = (self._clock() if now is None else now) - self.config.window_s
        while window and window[0].at < horizon:
            window.popleft()
        if since is not None and since > horizon:
            return [o for o in window if o.at >= since]
        return window

    def stats(
        self, key: SeriesKey, *, now: float | None = None, since: float | None = None
    ) -> ArmStats:
        """The window's outcomes, optionally only those at or after `since` (the guard compares
        the stable arm over the canary's lifetime only: the same traffic period)."""
        return summarize(self._outcomes(key, now, since))

    def tally(
        self, key: SeriesKey, *, now: float | None = None, since: float | None = None
    ) -> Tally:
        """The same outcomes as `stats`, as mergeable counts (what this process publishes)."""
        out = Tally()
        for o in self._outcomes(key, now, since):
            out.add(
                failed=o.failed, latency_s=o.latency_s, refusal=o.refusal,
                schema_violation=o.schema_violation,
            )  # fmt: skip
        return out

    def reset(self, key: SeriesKey) -> None:
        self._windows.pop(key, None)

    def prune(self, keep: Callable[[SeriesKey], bool]) -> None:
        """Drop the windows of releases that no longer serve their alias (bounded memory)."""
        for key in [k for k in self._windows if not keep(k)]:
            del self._windows[key]

    def __len__(self) -> int:
        return len(self._windows)
