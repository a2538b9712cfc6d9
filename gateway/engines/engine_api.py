"""The engine calls the pool makes, behind one small interface.

`HttpEngineApi` is the real one (vLLM over aiohttp, adapters/engine_client.py); the fleet
simulation (loadtests/fleet_sim.py) passes simulated engines through the same interface, so it
drives the pool's own code.
"""

from __future__ import annotations

from typing import Protocol

import aiohttp

from adapters.engine_client import (
    list_adapters,
    load_adapter,
    probe_health,
    read_metrics,
    unload_adapter,
)
from adapters.errors import EngineUnavailable
from gateway.engines.load import EngineLoad, parse_engine_metrics


class EngineApi(Protocol):
    async def health(self, url: str) -> str: ...  # "ok" | "down" | "slow"; never raises
    async def adapters(self, url: str) -> set[str]: ...  # raises EngineUnavailable
    async def load(self, url: str, name: str, path: str) -> None: ...
    async def unload(self, url: str, name: str) -> None: ...
    async def load_report(self, url: str) -> EngineLoad | None: ...  # None: unknown


class HttpEngineApi:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def health(self, url: str) -> str:
        return await probe_health(self.session, url)

    async def adapters(self, url: str) -> set[str]:
        return await list_adapters(self.session, url)

    async def load(self, url: str, name: str, path: str) -> None:
        await load_adapter(self.session, url, name, path)

    async def unload(self, url: str, name: str) -> None:
        await unload_adapter(self.session, url, name)

    async def load_report(self, url: str) -> EngineLoad | None:
        try:
            return parse_engine_metrics(await read_metrics(self.session, url))
        except EngineUnavailable:
            return None
