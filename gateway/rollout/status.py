"""The canary's numbers as operators see them: the fleet's windows, judged like the guard does.

The admin API's canary status and the audit reasons of manual promote/rollback use this, so a
human decides on the same numbers the guard would (the sum over live gateways, or this process's
own windows when Redis is away, said in `source`).

    view = await canary_status(state, "acme", "support")
    view["arms"]["canary"]["error_rate"], view["would_trip"]
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.observability.tally import ArmStats
from gateway.rollout.analysis import Decision
from gateway.rollout.guard import guarded, verdict
from gateway.state import AppState
from registry.compact import AnyAlias


def _arm(stats: ArmStats) -> dict[str, Any]:
    return {
        "n": stats.requests,
        "errors": stats.errors,
        "error_rate": round(stats.error_rate, 6),
        "refusal_rate": round(stats.refusal_rate, 6),
        "schema_violation_rate": round(stats.schema_violation_rate, 6),
        "p95_ms": None if stats.p95_s is None else round(stats.p95_s * 1000, 3),
    }


async def decision_for(state: AppState, alias: AnyAlias) -> tuple[Decision, str, int] | None:
    """The guard's verdict on the fleet's numbers now, with their source and gateway count."""
    snapshot = state.watcher.state
    if not guarded(snapshot, alias):
        return None
    arms = (await state.fleet.exchange([alias]))[(alias.tenant, alias.alias)]
    return verdict(snapshot, alias, arms, state.canary_windows.config), arms.source, arms.gateways


async def canary_status(state: AppState, alias: AnyAlias) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tenant": alias.tenant, "alias": alias.alias, "revision": alias.revision,
        "stable": alias.stable, "canary": alias.canary, "canary_weight": alias.canary_weight,
    }  # fmt: skip
    judged = await decision_for(state, alias)
    if judged is None:
        return {**out, "guarded": False}
    decision, source, gateways = judged
    release = state.watcher.state.release(alias.tenant, str(alias.canary))
    return {
        **out,
        "guarded": True,
        "source": source,  # "fleet": summed over `gateways` live processes; "local": this one
        "gateways": gateways,
        "arms": {"stable": _arm(decision.stable), "canary": _arm(decision.canary)},
        "action": decision.action,  # wait | hold | rollback | promote
        "would_trip": list(decision.exceeded),
        "thresholds": msgspec.to_builtins(release.thresholds) if release is not None else None,
        "reason": decision.reason,
    }


async def numbers_note(state: AppState, alias: AnyAlias) -> str:
    """One line for a manual decision's audit reason: what the fleet's windows said then."""
    judged = await decision_for(state, alias)
    return "" if judged is None else judged[0].reason.replace("canary guard: ", "numbers: ", 1)
