"""LoRA-affinity routing: the policy, and a simulation against round-robin (no engine needed).

Simulation: 100 tenants with Zipf(s=1.1) traffic over 4 replicas with max_loras=8 slots each. A
request is a miss when its adapter is not resident on the replica that serves it; residency per
replica is an LRU of `slots` adapters, as the engine's GPU slots are.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from gateway.engines.routing import ReplicaView, choose_replica, round_robin


def _view(
    name: str, resident: set[str], in_flight: int = 0, cap: int = 4, slots: int = 8
) -> ReplicaView:
    return ReplicaView(name, True, in_flight, cap, frozenset(resident), slots)


def test_prefers_the_replica_holding_the_adapter() -> None:
    views = [_view("a", set()), _view("b", {"x"}, in_flight=1)]
    choice = choose_replica(views, "x")
    assert choice is not None
    assert (choice.replica, choice.miss) == ("b", False)


def test_miss_goes_to_least_loaded_with_a_free_slot() -> None:
    full = {f"f{i}" for i in range(8)}
    views = [_view("a", full), _view("b", {"y"}, in_flight=2), _view("c", set(), in_flight=1)]
    choice = choose_replica(views, "x")
    assert choice is not None
    assert (choice.replica, choice.miss) == ("c", True)


def test_hot_adapter_spills_to_another_replica() -> None:
    views = [_view("a", {"x"}, in_flight=3), _view("b", set(), in_flight=0)]
    choice = choose_replica(views, "x")
    assert choice is not None
    assert (choice.replica, choice.miss) == ("b", True)


def test_none_when_everything_is_at_cap_and_unavailable_is_skipped() -> None:
    views = [_view("a", {"x"}, in_flight=4), ReplicaView("b", False, 0, 4, frozenset(), 8)]
    assert choose_replica(views, "x") is None


def test_exclude_is_honoured() -> None:
    views = [_view("a", {"x"}), _view("b", set())]
    choice = choose_replica(views, "x", exclude=frozenset({"a"}))
    assert choice is not None
    assert choice.replica == "b"


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
            views = [
                ReplicaView(n, True, in_flight[n], 16, frozenset(cpu[n]), cpu_slots) for n in names
            ]
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
