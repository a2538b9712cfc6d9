"""LoRA-affinity routing: the policy, and a simulation against round-robin (no engine needed).

Simulation (one gateway; the fleet of gateways is tests/unit/test_fleet_sim.py): 100 tenants with
Zipf(s=1.1) traffic over 4 replicas. A request is a miss when its adapter is not resident on the
replica that serves it; residency per replica is an LRU of `slots` adapters, as the engine's are.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from gateway.engines.placement import rendezvous_order
from gateway.engines.routing import Choice, ReplicaView, choose_replica, round_robin


def _view(
    name: str, resident: set[str], load: int = 0, cap: int = 4, *, open_: bool = True
) -> ReplicaView:
    return ReplicaView(name, True, open_, load, cap, frozenset(resident))


NAMES = ("a", "b", "c", "d")


def test_an_adapter_goes_to_its_rendezvous_home_whatever_else_holds_it() -> None:
    for adapter in (f"lg-t{i}" for i in range(50)):
        home = rendezvous_order(adapter, NAMES)[0]
        views = [_view(n, {adapter} if n != home else set(), load=1) for n in NAMES]
        choice = choose_replica(views, adapter)
        assert choice == Choice(home, miss=True)
        views = [_view(n, {adapter}) for n in reversed(NAMES)]  # order of the list is irrelevant
        assert choose_replica(views, adapter) == Choice(home, miss=False)


def test_a_busy_home_spills_to_the_second_choice_only() -> None:
    adapter = "lg-hot"
    first, second, *_ = rendezvous_order(adapter, NAMES)
    views = [_view(n, {adapter} if n == first else set(), load=0, cap=8) for n in NAMES]
    assert choose_replica(views, adapter) == Choice(first, miss=False)
    busy = [_view(n, {adapter} if n == first else set(), load=7 if n == first else 1, cap=8)
            for n in NAMES]  # fmt: skip
    assert choose_replica(busy, adapter) == Choice(second, miss=True)
    # Busy but not above the floor (spill_at of the cap): a spill would only cost a load.
    mild = [_view(n, {adapter} if n == first else set(), load=3 if n == first else 0, cap=8)
            for n in NAMES]  # fmt: skip
    assert choose_replica(mild, adapter) == Choice(first, miss=False)


def test_a_joining_replica_takes_only_its_share() -> None:
    adapters = [f"lg-t{i}" for i in range(2000)]
    before = {a: rendezvous_order(a, NAMES)[0] for a in adapters}
    after = {a: rendezvous_order(a, (*NAMES, "e"))[0] for a in adapters}
    moved = [a for a in adapters if before[a] != after[a]]
    assert all(after[a] == "e" for a in moved)
    assert 0.15 < len(moved) / len(adapters) < 0.25
    left = {a: rendezvous_order(a, NAMES[1:])[0] for a in adapters}  # "a" leaves
    assert all(left[a] == before[a] for a in adapters if before[a] != "a")


def test_none_when_nothing_is_open_to_this_gateway_and_unavailable_is_skipped() -> None:
    views = [_view("a", {"x"}, open_=False), ReplicaView("b", False, True, 0, 4, frozenset())]
    assert choose_replica(views, "x") is None


def test_exclude_is_honoured() -> None:
    home = rendezvous_order("x", ("a", "b"))[0]
    other = "b" if home == "a" else "a"
    views = [_view("a", {"x"}), _view("b", {"x"})]
    assert choose_replica(views, "x", exclude=frozenset({home})) == Choice(other, miss=False)


def test_base_model_requests_go_to_the_least_loaded() -> None:
    views = [_view("a", set(), load=3), _view("b", set(), load=1), _view("c", set(), load=2)]
    assert choose_replica(views, None) == Choice("b", miss=False)


def simulate(
    policy: str, *, requests: int = 20_000, seed: int = 7, cpu_slots: int = 32, gpu_slots: int = 8
) -> tuple[float, float]:
    """Return (load-miss rate, GPU-slot swap rate).

    A load miss is a request sent to a replica that does not hold its adapter (it must be loaded
    from disk: the 0.5-6 s TTFT penalty); a GPU swap is a request whose adapter is not among the
    replica's `max_loras` hot slots (a cheaper CPU->GPU copy inside the engine).
    """
    rng = random.Random(seed)
    tenants = [f"t{i}" for i in range(100)]
    weights = [1 / (rank**1.1) for rank in range(1, 101)]
    names = [f"r{i}" for i in range(4)]
    cpu = {n: OrderedDict[str, None]() for n in names}
    gpu = {n: OrderedDict[str, None]() for n in names}
    in_flight = dict.fromkeys(names, 0)
    active: list[tuple[int, str]] = []  # (finish step, replica)
    misses = swaps = 0
    for step in range(requests):
        for _, name in [a for a in active if a[0] <= step]:
            in_flight[name] -= 1
        active = [a for a in active if a[0] > step]
        adapter = rng.choices(tenants, weights)[0]
        if policy == "affinity":
            views = [ReplicaView(n, True, True, in_flight[n], 16, frozenset(cpu[n])) for n in names]
            choice = choose_replica(views, adapter)
            assert choice is not None
            name = choice.replica
        else:
            name = round_robin([_view(n, set()) for n in names], step)
        for cache, size, is_cpu in ((cpu[name], cpu_slots, True), (gpu[name], gpu_slots, False)):
            if adapter in cache:
                cache.move_to_end(adapter)
                continue
            if is_cpu:
                misses += 1
            else:
                swaps += 1
            cache[adapter] = None
            if len(cache) > size:
                cache.popitem(last=False)
        in_flight[name] += 1
        active.append((step + 1 + int(rng.expovariate(1 / 4)), name))
    return misses / requests, swaps / requests


def test_affinity_beats_round_robin_on_adapter_misses() -> None:
    affinity, affinity_swaps = simulate("affinity")
    rr, rr_swaps = simulate("round_robin")
    print(
        f"load-miss rate: affinity {affinity:.2%}, round-robin {rr:.2%}; "
        f"GPU-slot swaps: affinity {affinity_swaps:.2%}, round-robin {rr_swaps:.2%}"
    )
    assert affinity < 0.05
    assert rr > 5 * affinity
    assert affinity_swaps < rr_swaps
