"""Placement every gateway agrees on without talking to the others: rendezvous hashing.

Each adapter ranks the replicas by a hash of (adapter, replica identity); its home is the first.
Every gateway computes the same order from the same names, so an adapter is loaded where the
others send it too. A replica joining or leaving moves only the adapters whose first choice it is
(or was). Bounded load (consistent hashing with bounded loads): a replica is skipped while its load
is above `balance` times the mean and above a floor, so a hot adapter spills to its *second*
choice, the same second choice on every gateway, instead of piling onto its home.

Pure: no I/O, deterministic (blake2b, not Python's salted `hash`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from hashlib import blake2b


def weight(key: str, replica: str) -> int:
    digest = blake2b(f"{key}\0{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@lru_cache(maxsize=65_536)
def rendezvous_order(key: str, replicas: tuple[str, ...]) -> tuple[str, ...]:
    """`replicas` from the most to the least preferred for `key` (ties: by name)."""
    return tuple(sorted(replicas, key=lambda r: (-weight(key, r), r)))


def load_bound(loads: Iterable[int], *, balance: float, floor: float) -> float:
    """The load above which a replica is passed over: `balance` x the mean after this request,
    never below `floor` (below it a replica is not busy: spilling would only cost a load)."""
    values = list(loads)
    if not values:
        return floor
    mean = (sum(values) + 1) / len(values)
    return max(math.ceil(balance * mean), floor)
