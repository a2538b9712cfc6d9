"""Canary analysis, the pure part: the verdict over two arms' outcome statistics.

Every gateway process judges the fleet's windows (the sum over live gateways,
gateway/observability/fleet.py, or its own when Redis is away); the registry's compare-and-set
makes sure only one of the processes that reach the same verdict acts on it.

    arms = (await fleet.exchange([alias]))[("acme", "support")]
    decision = decide(arms.stable, arms.canary, release.thresholds, scope="fleet of 3 gateways")
    if decision.action == "rollback": ...   # decision.reason has the numbers
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.observability.tally import ArmStats
from registry.compact import AnyThresholds


@dataclass(frozen=True)
class Decision:
    action: Literal["wait", "hold", "rollback", "promote"]
    stable: ArmStats
    canary: ArmStats
    exceeded: tuple[str, ...] = ()
    scope: str = ""  # whose numbers: "fleet of 3 gateways" or "local windows"

    @property
    def reason(self) -> str:
        """The triggering numbers, for the audit log and the guard's log line."""
        s, c = self.stable, self.canary
        head = "; ".join(self.exceeded) if self.exceeded else "all within thresholds"
        scope = f"{self.scope}: " if self.scope else ""
        return (
            f"canary guard: {head} "
            f"({scope}canary n={c.requests} errors={c.errors} refusals={c.refusals} "
            f"schema_violations={c.schema_violations} p95={_ms(c.p95_s)}; "
            f"stable n={s.requests} errors={s.errors} refusals={s.refusals} "
            f"schema_violations={s.schema_violations} p95={_ms(s.p95_s)})"
        )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f}ms"


def decide(
    stable: ArmStats,
    canary: ArmStats,
    thresholds: AnyThresholds,
    *,
    promote_min_requests: int | None = None,
    scope: str = "",
) -> Decision:
    """Compare the arms against the canary release's thresholds.

    `wait` until both arms have `min_requests`; then `rollback` if any delta or ratio is exceeded,
    `promote` if `promote_min_requests` is given and the canary has that many clean requests,
    otherwise `hold`. A delta is canary minus stable, so a stable arm that is just as bad does not
    blame the canary.
    """
    if min(stable.requests, canary.requests) < thresholds.min_requests:
        return Decision("wait", stable, canary, scope=scope)
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
        return Decision("rollback", stable, canary, tuple(exceeded), scope)
    if promote_min_requests is not None and canary.requests >= promote_min_requests:
        return Decision("promote", stable, canary, scope=scope)
    return Decision("hold", stable, canary, scope=scope)
