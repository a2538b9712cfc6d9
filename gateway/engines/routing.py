"""LoRA-affinity routing as a pure function over a view of the replicas.

Policy: among healthy replicas where the adapter is already resident, take the one with the fewest
requests in flight, as long as it is under its cap; otherwise place the adapter on the least-loaded
healthy replica (a miss). Base-model requests go to the least-loaded replica. Ties break by name so
the choice is deterministic for tests and simulations.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicaView:
    name: str
    available: bool  # healthy and not ejected
    in_flight: int
    cap: int
    resident: Collection[str]  # engine adapter names loaded there
    slots: int  # how many adapters it can keep resident before evicting


@dataclass(frozen=True, slots=True)
class Choice:
    replica: str
    miss: bool  # the adapter has to be loaded there first


def choose_replica(
    replicas: Sequence[ReplicaView],
    engine_name: str | None,
    *,
    exclude: frozenset[str] = frozenset(),
    spill_at: float = 0.75,
) -> Choice | None:
    """Return where to send the request, or None when every available replica is at its cap.

    `spill_at`: when every resident replica is at least this fraction of its cap busy, the adapter
    is placed on one more replica (hot adapters spread, cold ones stay on one).
    """
    open_ = [r for r in replicas if r.available and r.name not in exclude and r.in_flight < r.cap]
    if not open_:
        return None
    if engine_name is None:
        best = min(open_, key=lambda r: (r.in_flight, r.name))
        return Choice(best.name, miss=False)
    resident = [r for r in open_ if engine_name in r.resident]
    if resident:
        best = min(resident, key=lambda r: (r.in_flight / r.cap, r.name))
        if best.in_flight < spill_at * best.cap:
            return Choice(best.name, miss=False)
        others = [r for r in open_ if engine_name not in r.resident]
        if not others:
            return Choice(best.name, miss=False)
        spill = min(others, key=lambda r: (r.in_flight / r.cap, len(r.resident) >= r.slots, r.name))
        if spill.in_flight < best.in_flight:
            return Choice(spill.name, miss=True)
        return Choice(best.name, miss=False)
    # Miss: prefer a replica with a free slot, then the least loaded.
    best = min(open_, key=lambda r: (len(r.resident) >= r.slots, r.in_flight / r.cap, r.name))
    return Choice(best.name, miss=True)


def round_robin(replicas: Sequence[ReplicaView], counter: int) -> str:
    """Baseline for the routing simulation."""
    return replicas[counter % len(replicas)].name
