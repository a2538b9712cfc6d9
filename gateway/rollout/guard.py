"""The canary guard: a small loop in the gateway's lifespan that judges canaries and acts.

Why it acts through `RegistryStore.mutate_alias` with the revision it judged: a human, another
gateway process or this loop may all move the alias at the same time; the compare-and-set lets
exactly one of them win. A loser sees RevisionConflict and simply judges again on the next snapshot.
The audit entry carries the triggering numbers (`Decision.reason`), the actor is `canary-guard`.

Why every process judges the *fleet's* numbers (gateway/observability/fleet.py): with 3 gateways
each sees a third of the traffic; judged alone, each would need three times as long to reach the
minimum sample and each would act on a different sample. Each pass publishes this process's
windows and reads the sum over the live gateways in one round trip, so all processes reach the
same verdict within one interval and the compare-and-set picks one writer.

    guard = CanaryGuard(FleetWindows(windows, FleetStore(redis), "gw-1", metrics), store, ...)
    task = asyncio.create_task(guard.run(interval_s=1.0))   # in the lifespan
    await guard.tick()                                       # one pass (tests)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.observability.fleet import Arms, FleetWindows
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.series import SeriesKey
from gateway.rollout.analysis import Decision, decide
from gateway.rollout.evaluation import eval_passes
from gateway.settings import CanaryConfig
from gateway.state import AppState
from registry import rollout
from registry.compact import AnyAlias
from registry.errors import RegistryError, RevisionConflict
from registry.models import Alias, Thresholds
from registry.snapshot import SnapshotWatcher
from registry.state import RegistryState
from registry.store import RegistryStore

log = logging.getLogger("loragate.canary")
ACTOR = "canary-guard"


@dataclass(frozen=True)
class Action:
    """What one pass did to one alias (returned by `tick` for tests and logs)."""

    tenant: str
    alias: str
    action: str  # "auto_rollback" | "auto_promote"
    won: bool  # False: another writer moved the alias first
    decision: Decision


class CanaryGuard:
    def __init__(
        self,
        fleet: FleetWindows,
        store: RegistryStore,
        watcher: SnapshotWatcher,
        metrics: GatewayMetrics,
        *,
        wall_clock: Callable[[], float] = time.time,
        promotion_gate: Callable[[AnyAlias], Awaitable[bool]] | None = None,
    ) -> None:
        self.fleet = fleet
        self._store = store
        self._watcher = watcher
        self._metrics = metrics
        self._wall = wall_clock
        self._gate = promotion_gate
        # (tenant, alias) -> revision already acted on, so a lost race is not retried every tick.
        self._acted: dict[tuple[str, str], int] = {}
        # (tenant, alias) -> revision whose canary failed the promotion gate (not asked again).
        self._refused: dict[tuple[str, str], int] = {}

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.tick()
            except RegistryError as exc:
                log.warning("canary guard pass failed: %s", exc.code)
            except Exception:
                log.exception("canary guard pass failed")
            await asyncio.sleep(interval_s)

    async def judge(self, state: RegistryState, alias: AnyAlias) -> Decision | None:
        """The verdict for one alias over the fleet's windows, or None when it is not guarded."""
        if not guarded(state, alias):
            return None
        arms = (await self.fleet.exchange([alias]))[(alias.tenant, alias.alias)]
        return verdict(state, alias, arms, self.fleet.windows.config)

    async def tick(self) -> list[Action]:
        state = self._watcher.state
        self._prune(state)
        # Only aliases running a canary: an index, not a scan of every alias.
        candidates = (state.aliases.get(key) for key in sorted(state.canaries))
        aliases = [a for a in candidates if a is not None and guarded(state, a)]
        fleet = await self.fleet.exchange(aliases)  # publishes even the ones acted on: cheap
        actions: list[Action] = []
        for alias in aliases:
            if self._acted.get((alias.tenant, alias.alias)) == alias.revision:
                continue
            decision = verdict(state, alias, fleet[(alias.tenant, alias.alias)],
                               self.fleet.windows.config)  # fmt: skip
            if decision.action == "rollback" and alias.flags.auto_rollback:
                actions.append(await self._rollback(alias, decision))
            elif decision.action == "promote" and await self._may_promote(alias):
                actions.append(await self._promote(alias, decision))
        return actions

    async def _may_promote(self, alias: AnyAlias) -> bool:
        key = (alias.tenant, alias.alias)
        if self._refused.get(key) == alias.revision:
            return False
        if self._gate is None or await self._gate(alias):
            return True
        self._refused[key] = alias.revision
        log.info("auto-promotion of %s/%s held: evaluation failed", alias.tenant, alias.alias)
        return False

    async def _rollback(self, alias: AnyAlias, decision: Decision) -> Action:
        reason = decision.reason
        now = self._wall()
        won = await self._mutate(
            alias, "auto_rollback", reason, lambda cur: rollout.rollback(cur, reason, now=now)
        )
        if won:
            self._metrics.count_auto_rollback(alias.tenant, alias.alias)
            log.warning(
                "auto-rollback of %s/%s canary %s: %s",
                alias.tenant, alias.alias, alias.canary, reason,
            )  # fmt: skip
        return Action(alias.tenant, alias.alias, "auto_rollback", won, decision)

    async def _promote(self, alias: AnyAlias, decision: Decision) -> Action:
        now = self._wall()
        won = await self._mutate(
            alias, "auto_promote", decision.reason, lambda cur: rollout.promote(cur, now=now)
        )
        if won:
            log.info("auto-promotion of %s/%s canary %s", alias.tenant, alias.alias, alias.canary)
        return Action(alias.tenant, alias.alias, "auto_promote", won, decision)

    async def _mutate(
        self, alias: AnyAlias, action: str, reason: str, change: Callable[[Alias], Alias]
    ) -> bool:
        key = (alias.tenant, alias.alias)
        try:
            await self._store.mutate_alias(
                alias.tenant,
                alias.alias,
                expected_revision=alias.revision,
                change=change,
                action=action,
                reason=reason,
                actor=ACTOR,
            )
        except RevisionConflict:
            self._acted[key] = alias.revision  # someone else moved it first: judge their state
            return False
        # RegistryUnavailable propagates before this line: the same revision is tried next pass.
        self._acted[key] = alias.revision
        with contextlib.suppress(RegistryError):
            await self._watcher.refresh()  # stop routing to the canary here without waiting
        return True

    def _prune(self, state: RegistryState) -> None:
        def live(key: SeriesKey) -> bool:
            alias = state.aliases.get((key.tenant, key.alias))
            if alias is None:
                return False
            return key.release == (alias.stable if key.arm == "stable" else alias.canary)

        self.fleet.windows.prune(live)  # per window held, not per alias registered
        self._acted = {k: v for k, v in self._acted.items() if k in state.aliases}
        self._refused = {k: v for k, v in self._refused.items() if k in state.aliases}


def guarded(state: RegistryState, alias: AnyAlias) -> bool:
    """A canary in progress that the guard judges (and the fleet publishes windows for)."""
    return (
        alias.canary is not None
        and alias.stable is not None
        and not alias.flags.kill_switch
        and state.release(alias.tenant, alias.canary) is not None
    )


def verdict(state: RegistryState, alias: AnyAlias, arms: Arms, config: CanaryConfig) -> Decision:
    """The decision over `arms` against the canary release's thresholds (guard, admin status)."""
    assert alias.canary is not None
    release = state.release(alias.tenant, alias.canary)
    thresholds = release.thresholds if release is not None else Thresholds()
    promote_min = config.promote_min_requests if config.auto_promote else None
    scope = (
        f"fleet totals over {arms.gateways} gateway process(es)"
        if arms.source == "fleet"
        else "local windows of this process (fleet numbers unavailable)"
    )
    return decide(
        arms.stable, arms.canary, thresholds, promote_min_requests=promote_min, scope=scope
    )


def start_guard(state: AppState) -> asyncio.Task[None] | None:
    """The lifespan hook: the guard loop over the fleet's windows (None when disabled)."""
    config = state.canary_windows.config
    if not config.enabled:
        return None

    async def gate(alias: AnyAlias) -> bool:
        return await eval_passes(state, alias)

    guard = CanaryGuard(state.fleet, state.store, state.watcher, state.metrics, promotion_gate=gate)
    return asyncio.create_task(guard.run(config.interval_s), name="canary-guard")


async def stop_guard(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
