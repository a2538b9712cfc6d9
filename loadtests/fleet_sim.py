"""Fleet routing simulation: N gateways, each with its own EnginePool, in front of shared engines.

    python -m loadtests.fleet_sim --gateways 3
    ... gateways=3 load_miss=0.30% round_robin=41.12%      (the last line)

Each gateway is the product's own `EnginePool` (routing, placement, residency, caps) with its own
process-local state; the engines are simulated behind the pool's `EngineApi` interface, and the
gateways learn only what the engines report (`/v1/models`, the load gauges) on their periodic
probes, staggered across gateways. Requests arrive one per step, spread round-robin over the
gateways as a Service does; tenants are Zipf(1.1); each request holds its replica for an
exponential number of steps (mean 4).

A *load miss* is counted at the engine: a request whose adapter is not in the engine's CPU LRU of
`slots` adapters (vLLM --max-cpu-loras) must be read from disk first, whether through an explicit
load call or vLLM's own transparent reload after its LRU evicted it. Round-robin over the replicas
through the same engines is printed beside, as the baseline without affinity.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import heapq
import itertools
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from gateway.engines.load import EngineLoad
from gateway.engines.pool import EnginePool
from gateway.engines.replica import Lease, PoolConfig
from registry.models import AdapterVersion


@dataclass
class SimEngine:
    """One vLLM replica as the fleet sees it: registered adapters, a CPU LRU, requests running."""

    slots: int
    registered: set[str] = field(default_factory=set)
    cpu: OrderedDict[str, None] = field(default_factory=OrderedDict)
    running: int = 0
    peak: int = 0
    disk_loads: int = 0  # load misses: an adapter read from disk
    load_calls: int = 0
    unload_calls: int = 0

    def touch(self, name: str) -> None:
        if name in self.cpu:
            self.cpu.move_to_end(name)
            return
        self.disk_loads += 1
        self.cpu[name] = None
        if len(self.cpu) > self.slots:
            self.cpu.popitem(last=False)  # the engine's own LRU

    def start(self, name: str | None) -> None:
        if name is not None:
            if name not in self.registered:
                raise AssertionError("request for an adapter the engine does not hold (404)")
            self.touch(name)
        self.running += 1
        self.peak = max(self.peak, self.running)


class SimEngineApi:
    """The pool's EngineApi over simulated engines (by URL)."""

    def __init__(self, engines: dict[str, SimEngine]) -> None:
        self.engines = engines

    async def health(self, url: str) -> str:
        return "ok"

    async def adapters(self, url: str) -> set[str]:
        return set(self.engines[url].registered)

    async def load(self, url: str, name: str, path: str) -> None:
        engine = self.engines[url]
        engine.load_calls += 1
        if name not in engine.registered:  # vLLM: "already been loaded" is a no-op
            engine.registered.add(name)
            engine.touch(name)

    async def unload(self, url: str, name: str) -> None:
        engine = self.engines[url]
        engine.unload_calls += 1
        engine.registered.discard(name)
        engine.cpu.pop(name, None)

    async def load_report(self, url: str) -> EngineLoad | None:
        return EngineLoad(running=self.engines[url].running, waiting=0)


@dataclass(frozen=True)
class Result:
    gateways: int
    requests: int
    load_miss: float
    round_robin: float
    load_calls: int
    overloaded: int
    peak_running: int


def _adapters(tenants: int) -> list[AdapterVersion]:
    return [
        AdapterVersion(
            tenant=f"t{i:03d}",
            name="a",
            version=1,
            path=f"t{i:03d}/a/1",
            digest="sha256:" + f"{i:064x}",
            base_model="sim",
            rank=8,
            target_modules=("q_proj",),
            size_bytes=1,
        )
        for i in range(tenants)
    ]


async def _fleet(
    gateways: int,
    *,
    requests: int,
    tenants: int,
    replicas: int,
    slots: int,
    cap: int,
    probe_every: int,
    seed: int,
) -> tuple[float, int, int, int]:
    rng = random.Random(seed)
    urls = [f"http://sim-{i}" for i in range(replicas)]
    engines = {u: SimEngine(slots) for u in urls}
    api = SimEngineApi(engines)
    config = PoolConfig(
        base_model="sim", adapter_store=Path("."), engine_adapter_root=Path("."),
        max_concurrency=cap, queue_timeout_s=0.0, verify_artifacts=False,
    )  # fmt: skip
    pools = [EnginePool(urls, api, config) for _ in range(gateways)]
    for pool in pools:
        pool.set_live_gateways(gateways)
        await pool.start()
        await pool.stop()  # no background loop: probes run on the simulated clock below
    adapters = _adapters(tenants)
    cum = list(itertools.accumulate(1 / rank**1.1 for rank in range(1, tenants + 1)))
    active: list[tuple[int, int, int, Lease]] = []  # (finish step, seq, gateway, lease)
    overloaded = 0
    for step in range(requests):
        while active and active[0][0] <= step:
            _, _, g, lease = heapq.heappop(active)
            pools[g].release(lease)
            engines[lease.replica.url].running -= 1
        for g, pool in enumerate(pools):  # staggered: gateway g reads at its own phase
            if (step + g * probe_every // gateways) % probe_every == 0:
                await pool.probe_all()
        g = step % gateways
        adapter = rng.choices(adapters, cum_weights=cum)[0]
        try:
            lease = await pools[g].acquire(adapter)
        except Exception:  # PoolOverloaded: every replica at this gateway's share
            overloaded += 1
            continue
        engines[lease.replica.url].start(lease.engine_name)
        heapq.heappush(active, (step + 1 + int(rng.expovariate(1 / 4)), step, g, lease))
    misses = sum(e.disk_loads for e in engines.values())
    calls = sum(e.load_calls for e in engines.values())
    peak = max(e.peak for e in engines.values())
    return misses / requests, calls, overloaded, peak


@functools.cache  # the same baseline beside every gateway count
def _round_robin(*, requests: int, tenants: int, replicas: int, slots: int, seed: int) -> float:
    rng = random.Random(seed)
    engines = [SimEngine(slots) for _ in range(replicas)]
    names = [a.engine_name for a in _adapters(tenants)]
    cum = list(itertools.accumulate(1 / rank**1.1 for rank in range(1, tenants + 1)))
    for step in range(requests):
        engines[step % replicas].touch(rng.choices(names, cum_weights=cum)[0])
    return sum(e.disk_loads for e in engines) / requests


def simulate(
    gateways: int,
    *,
    requests: int = 40_000,
    tenants: int = 100,
    replicas: int = 4,
    slots: int = 32,
    cap: int = 64,
    probe_every: int = 100,
    seed: int = 7,
) -> Result:
    """`probe_every`: steps between one gateway's engine reads (100 = 1 s at 100 req/s)."""
    miss, calls, overloaded, peak = asyncio.run(
        _fleet(
            gateways,
            requests=requests,
            tenants=tenants,
            replicas=replicas,
            slots=slots,
            cap=cap,
            probe_every=probe_every,
            seed=seed,
        )
    )
    rr = _round_robin(requests=requests, tenants=tenants, replicas=replicas, slots=slots, seed=seed)
    return Result(gateways, requests, miss, rr, calls, overloaded, peak)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    r = simulate(
        args.gateways, requests=args.requests, tenants=args.tenants, replicas=args.replicas,
        slots=args.slots, seed=args.seed,
    )  # fmt: skip
    print(f"load calls={r.load_calls} overloaded={r.overloaded} peak running={r.peak_running}")
    print(f"gateways={r.gateways} load_miss={r.load_miss:.2%} round_robin={r.round_robin:.2%}")


if __name__ == "__main__":
    main()
