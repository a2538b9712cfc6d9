"""Fleet-wide canary windows: every gateway process publishes its windows, the guard sums them.

Why publish window *states*, not deltas: each process sends what its sliding window holds now
(the stable arm since the canary started, the canary arm), so the fleet's window is the plain sum
of the live processes' payloads, a lost publish costs nothing, and a process that dies drops out
of the sum when its lease lapses (registry/fleet.py). Only aliases with a canary in progress are
published: the cost follows the canaries running, never the tenant count.

When Redis does not answer, every alias falls back to this process's own windows and
`loragate_canary_local_fallback` says so (1).

    fleet = FleetWindows(windows, FleetStore(redis), "gw-1", metrics, lease_s=5.0)
    arms = await fleet.exchange(state, aliases)      # {(tenant, alias): Arms}
    arms[("acme", "support")].canary.requests        # the fleet's canary requests in the window
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from gateway.observability.metrics import GatewayMetrics
from gateway.observability.series import SeriesKey
from gateway.observability.tally import ArmStats, Tally
from gateway.observability.windows import Windows
from registry import rollout
from registry.compact import AliasRec, AnyAlias
from registry.errors import RegistryUnavailable
from registry.fleet import FleetStore

log = logging.getLogger("loragate.canary")


@dataclass(frozen=True)
class Arms:
    """Both arms' numbers for one alias, and where they come from."""

    stable: ArmStats
    canary: ArmStats
    source: Literal["fleet", "local"]
    gateways: int  # processes in the sum (1 for local)


def arm_keys(alias: AnyAlias) -> tuple[SeriesKey, SeriesKey]:
    assert alias.stable is not None
    assert alias.canary is not None
    return (
        SeriesKey(alias.tenant, alias.alias, alias.stable, "stable"),
        SeriesKey(alias.tenant, alias.alias, alias.canary, "canary"),
    )


class FleetWindows:
    def __init__(
        self,
        windows: Windows,
        store: FleetStore | None,
        process_id: str,
        metrics: GatewayMetrics,
        *,
        lease_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.windows = windows
        self._store = store
        self.process_id = process_id
        self._metrics = metrics
        self.lease_s = lease_s
        self._clock = clock
        self._wall = wall_clock
        self.fallback = False

    def _since(self, alias: AnyAlias, now: float) -> float | None:
        """The canary's wall-clock start on this process's monotonic clock: stable outcomes from
        before it (another period, another load) are not compared."""
        started = (
            alias.canary_started
            if isinstance(alias, AliasRec)
            else rollout.canary_started_at(alias)
        )
        return None if started is None else now - max(0.0, self._wall() - started)

    def tallies(self, alias: AnyAlias, now: float) -> tuple[Tally, Tally]:
        stable_key, canary_key = arm_keys(alias)
        since = self._since(alias, now)
        return (
            self.windows.tally(stable_key, now=now, since=since),
            self.windows.tally(canary_key, now=now),
        )

    def local(self, alias: AnyAlias, now: float | None = None) -> Arms:
        now = self._clock() if now is None else now
        stable_key, canary_key = arm_keys(alias)
        stable = self.windows.stats(stable_key, now=now, since=self._since(alias, now))
        return Arms(stable, self.windows.stats(canary_key, now=now), "local", 1)

    async def exchange(self, aliases: Sequence[AnyAlias]) -> dict[tuple[str, str], Arms]:
        """Publish this process's windows of each alias (each has a stable and a canary) and
        return the fleet's sums; this process's own windows when Redis does not answer."""
        now = self._clock()
        if not aliases:
            return {}
        if self._store is None:
            return {(a.tenant, a.alias): self.local(a, now) for a in aliases}
        entries: list[tuple[str, str, bytes]] = []
        for alias in aliases:
            stable, canary = self.tallies(alias, now)
            payload = {"s": [alias.stable, stable.to_wire()], "c": [alias.canary, canary.to_wire()]}
            entries.append((alias.tenant, alias.alias, orjson.dumps(payload)))
        try:
            rows = await self._store.exchange_canary(self.process_id, self.lease_s, entries)
        except RegistryUnavailable as exc:
            self._set_fallback(True, exc)
            return {(a.tenant, a.alias): self.local(a, now) for a in aliases}
        self._set_fallback(False)
        out: dict[tuple[str, str], Arms] = {}
        most = 0
        for alias, payloads in zip(aliases, rows, strict=True):
            arms = _sum(alias, payloads)
            most = max(most, arms.gateways)
            out[(alias.tenant, alias.alias)] = arms
        self._metrics.set_canary_fleet(fallback=False, gateways=most)
        return out

    def _set_fallback(self, fallback: bool, exc: BaseException | None = None) -> None:
        if fallback and not self.fallback:
            log.warning("fleet canary windows unavailable (%s): judging local windows", exc)
        elif not fallback and self.fallback:
            log.info("fleet canary windows available again")
        self.fallback = fallback
        if fallback:
            self._metrics.set_canary_fleet(fallback=True, gateways=1)


def _sum(alias: AnyAlias, payloads: Sequence[bytes]) -> Arms:
    """The sum of the payloads that judge the same releases (a gateway on an older snapshot may
    still publish the previous canary for one interval: it does not count)."""
    stable, canary, n = Tally(), Tally(), 0
    for raw in payloads:
        try:
            doc = orjson.loads(raw)
            (s_release, s_wire), (c_release, c_wire) = doc["s"], doc["c"]
            if (s_release, c_release) != (alias.stable, alias.canary):
                continue
            s, c = Tally.from_wire(s_wire), Tally.from_wire(c_wire)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # another version's payload: not ours to sum
        stable.merge(s)
        canary.merge(c)
        n += 1
    return Arms(stable.stats(), canary.stats(), "fleet", n)
