"""LoRA-affinity routing as a pure function over a view of the replicas.

Policy (gateway/engines/placement.py): an adapter goes to the first replica in its rendezvous
order whose load is under the bounded-load limit; base-model requests go to the least loaded.
`load` is what the engine itself reported at the last read plus what this gateway sent since, so
every gateway balances on the same numbers; `open` is this gateway's own admission (its share of
the replica's concurrency cap). `miss` says whether the adapter has to be loaded there first.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gateway.engines.placement import load_bound, rendezvous_order


@dataclass(frozen=True, slots=True)
class ReplicaView:
    name: str  # stable identity: the rendezvous hash and metric labels use it
    available: bool  # healthy, not ejected, not leaving
    open: bool  # this gateway may send it one more request (its share of the cap)
    load: int  # requests at the engine: its last report plus this gateway's since
    cap: int  # the replica's whole concurrency cap, all gateways together
    resident: Collection[str]  # engine adapter names the engine holds


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
    balance: float = 1.25,
) -> Choice | None:
    """Where to send the request, or None when no available replica is open to this gateway.

    A replica is passed over for an adapter while its load is at least `balance` x the mean and
    at least `spill_at` of its cap: hot adapters spread to their next replica, cold ones stay home.
    """
    live = [r for r in replicas if r.available]
    open_ = [r for r in live if r.open and r.name not in exclude and r.load < r.cap]
    if not open_:
        open_ = [r for r in live if r.open and r.name not in exclude]  # engine count is stale
        if not open_:
            return None
    if engine_name is None:
        best = min(open_, key=lambda r: (r.load / max(1, r.cap), r.name))
        return Choice(best.name, miss=False)
    by_name = {r.name: r for r in open_}
    cap = max(r.cap for r in open_)
    bound = load_bound((r.load for r in live), balance=balance, floor=spill_at * cap)
    for name in rendezvous_order(engine_name, tuple(sorted(r.name for r in live))):
        r = by_name.get(name)
        if r is not None and r.load < bound:
            return Choice(r.name, miss=engine_name not in r.resident)
    best = min(open_, key=lambda r: (r.load / max(1, r.cap), engine_name not in r.resident, r.name))
    return Choice(best.name, miss=engine_name not in best.resident)


def round_robin(replicas: Sequence[ReplicaView], counter: int) -> str:
    """Baseline for the routing simulations."""
    return replicas[counter % len(replicas)].name
