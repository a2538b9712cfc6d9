"""The engine-time loop: publish this gateway's closed periods, settle them on the fleet's rows.

The pure arithmetic is in engine_time.py (why: see there). This loop runs every `tick_s` in each
gateway process: it drains the pool's busy intervals, publishes each closed period once, and
settles it `grace_s` after its end (time for the other gateways' rows to arrive), adding the
shares to `loragate_engine_seconds_total`. When Redis does not answer, the period is settled on
this gateway's own numbers (which, across several gateways, may count an overlap twice).

    loop = EngineTimeLoop(engine_time, FleetStore(redis), "gw-1", metrics, take_busy)
    task = asyncio.create_task(loop.run())
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from gateway.observability.engine_time import Cell, EngineTime
from gateway.observability.metrics import GatewayMetrics
from registry.errors import RegistryUnavailable
from registry.fleet import FleetStore

log = logging.getLogger("loragate.engine_time")
TakeBusy = Callable[[float], Mapping[str, list[tuple[float, float]]]]


class EngineTimeLoop:
    def __init__(
        self,
        engine_time: EngineTime,
        store: FleetStore | None,
        process_id: str,
        metrics: GatewayMetrics,
        take_busy: TakeBusy,
        *,
        grace_s: float | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine_time = engine_time
        self._store = store
        self._id = process_id
        self._metrics = metrics
        self._take_busy = take_busy
        period = engine_time.period_s
        self.tick_s = min(1.0, period / 4)
        self.grace_s = grace_s if grace_s is not None else min(2.0, period / 2)
        self._wall = wall_clock
        self._published: set[Cell] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("engine-time pass failed")
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        now = self._wall()
        et = self.engine_time
        for replica, intervals in self._take_busy(now).items():
            et.add_busy(replica, intervals)
        closed = et.closed(now)
        fresh = [c for c in closed if c not in self._published]
        due = [c for c in closed if (c[1] + 1) * et.period_s + self.grace_s <= now]
        try:
            if self._store is None:
                raise RegistryUnavailable("no fleet store")
            ttl = max(60.0, 10 * et.period_s)
            await self._store.publish_busy(
                self._id, [(r, p, et.row((r, p))) for r, p in fresh], ttl_s=ttl
            )
            self._published.update(fresh)
            rows: list[list[bytes]] | None = await self._store.read_busy(due)
        except RegistryUnavailable:
            rows = None
        for i, cell in enumerate(due):
            fleet_rows = None if rows is None or cell not in self._published else rows[i]
            self._metrics.add_engine_seconds(et.settle(cell, fleet_rows), cell[0])
            self._published.discard(cell)
