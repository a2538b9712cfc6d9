"""A loragate gateway with a probe for `loadtests.registry_scale`: the real app (settings from the
LORAGATE_* environment, as `loragate serve`) plus two bench-only routes.

- `POST /_probe/start`: from now on, record when each registry epoch is applied here (wall clock,
  comparable with the bench's on the same host) and the event loop's lag (a 2 ms timer's lateness).
  Also the time each published change takes on the loop (parse + apply + metric labels): the
  stall a write causes, without the scheduling noise of a shared machine.
- `GET /_probe`: what was recorded, the last full load's duration and the process's RSS.

    LORAGATE_PORT=8123 ... python -m loadtests.registry_probe
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

import uvicorn
from fastapi import Request

from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import AppState
from registry import snapshot
from registry.state import Delta, RegistryState, parse_changes

TICK_S = 0.002


class Probe:
    def __init__(self) -> None:
        self.applied: list[tuple[int, float]] = []
        self.lags: list[tuple[float, float]] = []  # (wall time, seconds late)
        self.apply_s: list[float] = []  # per published change: parse + apply, on the loop
        self.task: asyncio.Task[None] | None = None
        self.parse_started = 0.0

    async def sample_lag(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            late = time.perf_counter() - before - TICK_S
            self.lags.append((time.time(), max(0.0, late)))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = Settings()
    app = create_app(settings)
    probe = Probe()

    @app.post("/_probe/start", include_in_schema=False)
    async def start(request: Request) -> dict[str, Any]:
        state: AppState = request.app.state.lg
        watcher = state.watcher
        inner = watcher.on_change

        def on_change(new: RegistryState, delta: Delta) -> None:
            if inner is not None:
                inner(new, delta)
            probe.applied.append((new.epoch, time.time()))

        watcher.on_change = on_change
        on_message = watcher._on_message

        def timed_parse(payload: bytes | str, kinds: Any) -> Any:
            started = time.perf_counter()
            out = parse_changes(payload, kinds)
            probe.parse_started = started
            return out

        def timed_on_message(message: Any) -> None:
            on_message(message)
            probe.apply_s.append(time.perf_counter() - probe.parse_started)

        snapshot.parse_changes = timed_parse  # type: ignore[attr-defined]  # bench-only probe
        watcher._on_message = timed_on_message  # type: ignore[method-assign]
        if probe.task is None:
            probe.task = asyncio.create_task(probe.sample_lag())
        return {"epoch": watcher.state.epoch}

    @app.get("/_probe", include_in_schema=False)
    async def report(request: Request) -> dict[str, Any]:
        state: AppState = request.app.state.lg
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "applied": probe.applied,
            "lags": probe.lags,
            "apply_s": probe.apply_s,
            "full_load_s": state.watcher.full_load_s,
            "full_loads": state.watcher.full_loads,
            "epoch": state.watcher.state.epoch,
            "max_rss_mib": rss_kib / 1024,
        }

    uvicorn.run(app, host="127.0.0.1", port=settings.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
