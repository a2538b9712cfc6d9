"""The canary guard: a small loop in the gateway's lifespan that judges canaries and acts.

Why it acts through `RegistryStore.mutate_alias` with the revision it judged: a human, another
gateway process or this loop may all move the alias at the same time; the compare-and-set lets
exactly one of them win. A loser sees RevisionConflict and simply judges again on the next snapshot.
The audit entry carries the triggering numbers (`Decision.reason`), the actor is `canary-guard`.

    guard = CanaryGuard(windows, store, watcher, metrics)
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

from gateway.observability.metrics import GatewayMetrics
from gateway.observability.windows import Windows
from gateway.rollout.analysis import Decision, decide
from gateway.rollout.evaluation import eval_passes
from gateway.state import AppState
from registry import rollout
from registry.compact import AliasRec, AnyAlias
from registry.errors import RegistryError, RevisionConflict
from registry.models import Alias
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
        windows: Windows,
        store: RegistryStore,
        watcher: SnapshotWatcher,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        promotion_gate: Callable[[AnyAlias], Awaitable[bool]] | None = None,
    ) -> None:
        self.windows = windows
        self._store = store
        self._watcher = watcher
        self._metrics = metrics
        self._clock = clock
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

    def judge(self, state: RegistryState, alias: AnyAlias) -> Decision | None:
        """The verdict for one alias over the current windows, or None when it is not guarded."""
        if alias.canary is None or alias.stable is None or alias.flags.kill_switch:
            return None
        release = state.release(alias.tenant, alias.canary)
        if release is None:
            return None
        now = self._clock()
        # A concurrent comparison: stable outcomes from before the canary started (another
        # period, another load) do not count. Wall-clock start -> this process's monotonic clock.
        started = (
            alias.canary_started
            if isinstance(alias, AliasRec)
            else rollout.canary_started_at(alias)
        )
        since = None if started is None else now - max(0.0, self._wall() - started)
        stable_key = (alias.tenant, alias.alias, "stable", alias.stable)
        stable = self.windows.stats(stable_key, now=now, since=since)
        canary = self.windows.stats((alias.tenant, alias.alias, "canary", alias.canary), now=now)
        config = self.windows.config
        promote_min = config.promote_min_requests if config.auto_promote else None
        return decide(stable, canary, release.thresholds, promote_min_requests=promote_min)

    async def tick(self) -> list[Action]:
        state = self._watcher.state
        self._prune(state)
        actions: list[Action] = []
        # Only aliases running a canary (the index is copied: writes land while this awaits).
        for tenant, name in sorted(state.canaries):
            alias = state.aliases.get((tenant, name))
            if alias is None or self._acted.get((tenant, name)) == alias.revision:
                continue
            decision = self.judge(state, alias)
            if decision is None:
                continue
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
        def live(key: tuple[str, str, str, str]) -> bool:
            tenant, name, arm, release = key
            alias = state.aliases.get((tenant, name))
            if alias is None:
                return False
            return release == (alias.stable if arm == "stable" else alias.canary)

        self.windows.prune(live)  # per window held, not per alias registered
        self._acted = {k: v for k, v in self._acted.items() if k in state.aliases}
        self._refused = {k: v for k, v in self._refused.items() if k in state.aliases}


def start_guard(state: AppState) -> asyncio.Task[None] | None:
    """The lifespan hook: the guard loop over this process's windows (None when disabled)."""
    config = state.canary_windows.config
    if not config.enabled:
        return None

    async def gate(alias: AnyAlias) -> bool:
        return await eval_passes(state, alias)

    guard = CanaryGuard(
        state.canary_windows, state.store, state.watcher, state.metrics, promotion_gate=gate
    )
    return asyncio.create_task(guard.run(config.interval_s), name="canary-guard")


async def stop_guard(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
