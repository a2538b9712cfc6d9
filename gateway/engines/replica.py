"""What the pool knows of each vLLM replica, its configuration, and a request's lease on one.

Plain state (no I/O): `EnginePool` (gateway/engines/pool.py) keeps one `Replica` per engine it
was told of and updates it from probes, the engine's `/metrics` and its own requests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PoolConfig:
    base_model: str
    adapter_store: Path  # where the gateway reads artifacts (digest checks)
    engine_adapter_root: Path  # where the engines read the same artifacts
    max_concurrency: int = 64  # per replica, all gateways together
    queue_size: int = 256  # requests waiting for a slot, pool-wide
    tenant_queue_size: int = 64  # of one tenant (gateway/engines/fairqueue.py)
    queue_timeout_s: float = 5.0
    health_interval_s: float = 1.0
    discovery_interval_s: float = 5.0
    eject_after_failures: int = 3
    eject_base_s: float = 1.0
    eject_max_s: float = 30.0
    max_ejected_fraction: float = 0.5
    unload_grace_s: float = 900.0  # an adapter no release references is unloaded after this
    sweep_interval_s: float = 30.0
    verify_artifacts: bool = True  # re-check the digest before each load (off: simulations)
    # The engines fetch content-addressed artifacts (`sha256/<hex>`) from the object store and
    # check the digest on their own node (adapters/vllm_resolver.py): the gateway's own copy is
    # not what they read, and a gateway the push did not reach has none.
    engines_fetch: bool = False


@dataclass
class Replica:
    name: str  # stable identity (discovery.Endpoint.name)
    url: str
    healthy: bool = False
    leaving: bool = False  # discovery dropped it: no new requests, gone once drained
    in_flight: int = 0  # this gateway's requests there
    reported: int | None = None  # the engine's running + waiting at the last read (all gateways)
    sent_since_read: int = 0
    failures: int = 0
    slow_probes: int = 0  # health probes in a row that timed out
    ejections: int = 0
    ejected_until: float = 0.0
    resident: set[str] = field(default_factory=set)  # engine-reported, plus loaded here since
    loaded_here: set[str] = field(default_factory=set)  # loaded while a probe was listing
    users: dict[str, int] = field(default_factory=dict)  # engine name -> requests in flight
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    busy_s: float = 0.0  # seconds with at least one request in flight, up to busy_since
    busy_since: float = 0.0
    # The same busy periods on the wall clock, for the fleet's engine-time union (gateways on
    # several hosts can only be lined up by wall time); drained by `take_busy`.
    busy_since_wall: float = 0.0
    busy_log: list[tuple[float, float]] = field(default_factory=list)

    def available(self, now: float) -> bool:
        return self.healthy and not self.leaving and now >= self.ejected_until

    def load(self) -> int:
        """Requests at the engine as best known: its own last count plus what this gateway sent
        since (never less than this gateway's own in flight)."""
        if self.reported is None:
            return self.in_flight
        return max(self.in_flight, self.reported + self.sent_since_read)

    def take_busy(self, now_wall: float) -> list[tuple[float, float]]:
        """The wall-clock busy intervals since the last call (a running one up to `now_wall`)."""
        out, self.busy_log = self.busy_log, []
        if self.in_flight > 0:
            out.append((self.busy_since_wall, now_wall))
            self.busy_since_wall = now_wall
        return out

    def end_busy(self, now_wall: float) -> None:
        if self.busy_log and self.busy_since_wall - self.busy_log[-1][1] < 0.001:
            self.busy_log[-1] = (self.busy_log[-1][0], now_wall)  # bounded under light load
        else:
            self.busy_log.append((self.busy_since_wall, now_wall))

    def busy_seconds(self, now: float) -> float:
        """Cumulative seconds this gateway had a request in flight here (engine-time share)."""
        return self.busy_s + (now - self.busy_since if self.in_flight > 0 else 0.0)


@dataclass
class Lease:
    replica: Replica
    engine_model: str
    miss: bool
    engine_name: str | None
    released: bool = False
