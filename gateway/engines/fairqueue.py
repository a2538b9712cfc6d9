"""Fair queuing between tenants for the engine slots (pure: no I/O, no event loop).

    queue = FairQueue[Future](capacity=256, per_tenant=64)
    pushed_out = queue.push(Flow("acme", weight=3.0, band=1), waiter)   # may raise TenantQueueFull
    waiter = queue.pop()              # the next request to get a free slot, or None

Flows are (band, tenant). Bands are strict priority: band 0 (interactive) is served before band 1
(standard), band 1 before band 2 (batch). Inside a band, deficit round robin: each visit to a
tenant's flow credits it `weight` requests, so under contention tenants are served in proportion to
their weights whatever each one sends, and a tenant that sends one request at a time is served
within one round. Work-conserving: a tenant alone takes every slot (the queue only orders who waits;
a free slot is never kept back).

Bounded per tenant: a tenant may keep at most `per_tenant` requests waiting; beyond that its own
request is refused (`TenantQueueFull`). When the whole queue is full, the tenant furthest over its
share (queued / weight) gives up its newest waiting request to make room (it is returned to the
caller, which refuses it): a full queue never refuses a tenant on account of another tenant's
backlog. Memory and time are O(requests waiting), never O(tenants registered).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

BANDS = 3  # 0 interactive, 1 standard, 2 batch
MIN_WEIGHT = 0.1
MAX_WEIGHT = 100.0


@dataclass(frozen=True, slots=True)
class Flow:
    """Who a waiting request belongs to and how it is served."""

    tenant: str
    weight: float = 1.0
    band: int = 1

    def __post_init__(self) -> None:
        if not MIN_WEIGHT <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be in [{MIN_WEIGHT}, {MAX_WEIGHT}]")
        if not 0 <= self.band < BANDS:
            raise ValueError(f"band must be in [0, {BANDS})")


class TenantQueueFull(Exception):
    """The tenant's own backlog is at its bound: refuse this request, not anyone else's."""

    def __init__(self, tenant: str, queued: int) -> None:
        super().__init__(f"tenant {tenant!r} has {queued} requests waiting")
        self.tenant = tenant
        self.queued = queued


@dataclass(slots=True)
class _FlowQueue(Generic[T]):
    flow: Flow
    items: deque[T] = field(default_factory=deque)
    deficit: float = 0.0
    credited: bool = False  # got its quantum on this visit at the head of the round


class FairQueue(Generic[T]):
    """Per-(band, tenant) FIFO queues, strict priority across bands, DRR by weight within one."""

    def __init__(self, *, capacity: int, per_tenant: int) -> None:
        if capacity < 1 or per_tenant < 1:
            raise ValueError("capacity and per_tenant must be at least 1")
        self.capacity = capacity
        self.per_tenant = per_tenant
        self._flows: list[dict[str, _FlowQueue[T]]] = [{} for _ in range(BANDS)]
        self._active: list[deque[str]] = [deque() for _ in range(BANDS)]
        self._where: dict[T, tuple[int, str]] = {}
        self._per_tenant: dict[str, int] = {}
        self._weights: dict[str, float] = {}  # of tenants with something waiting

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._where)

    def __bool__(self) -> bool:
        return bool(self._where)

    def __contains__(self, item: object) -> bool:
        return item in self._where

    def depth(self, tenant: str) -> int:
        return self._per_tenant.get(tenant, 0)

    def depths(self) -> dict[str, int]:
        """Requests waiting per tenant (only tenants with at least one)."""
        return dict(self._per_tenant)

    def would_refuse(self, flow: Flow) -> bool:
        """`push` of one more request of `flow` would raise `TenantQueueFull`."""
        queued = self._per_tenant.get(flow.tenant, 0)
        if queued >= self.per_tenant:
            return True
        if len(self._where) < self.capacity:
            return False
        victim = self._furthest_over_share()
        if victim is None:
            return True
        # Equal shares: the newcomer is refused (pushing out an equal would only churn).
        return (queued + 1) / flow.weight >= self._per_tenant[victim] / self._weights[victim]

    # -- writing ---------------------------------------------------------------------------------
    def push(self, flow: Flow, item: T) -> T | None:
        """Queue `item` at the tail of its flow. Returns a request pushed out to make room (the
        newest of the tenant furthest over its share; the caller refuses it), or None.
        Raises `TenantQueueFull` when the request is its own tenant's excess."""
        if item in self._where:
            raise ValueError("item is already queued")
        if self.would_refuse(flow):
            raise TenantQueueFull(flow.tenant, self._per_tenant.get(flow.tenant, 0))
        pushed_out: T | None = None
        if len(self._where) >= self.capacity:
            victim = self._furthest_over_share()
            assert victim is not None  # would_refuse said there is one to push out
            pushed_out = self._newest_of(victim)
            self.remove(pushed_out)
        self._add(flow, item, front=False)
        return pushed_out

    def push_front(self, flow: Flow, item: T) -> None:
        """Put back a request that was handed a slot it could not use: it keeps its turn (next in
        its flow, its flow next in its band) and bypasses the bounds, since it was admitted."""
        if item in self._where:
            raise ValueError("item is already queued")
        self._add(flow, item, front=True)

    def pop(self) -> T | None:
        """The next request to serve, or None when nothing waits."""
        for band in range(BANDS):
            active = self._active[band]
            if not active:
                continue
            flows = self._flows[band]
            while True:
                fq = flows[active[0]]
                if not fq.credited:
                    fq.credited = True
                    fq.deficit += fq.flow.weight
                if fq.deficit >= 1.0:
                    fq.deficit -= 1.0
                    item = fq.items.popleft()
                    self._forget(item, band, fq)
                    return item
                fq.credited = False  # its turn is over: to the back of the round
                active.rotate(-1)
        return None

    def remove(self, item: T) -> bool:
        """Take a request out wherever it is (it timed out or its client left)."""
        where = self._where.get(item)
        if where is None:
            return False
        band, tenant = where
        fq = self._flows[band][tenant]
        fq.items.remove(item)
        self._forget(item, band, fq)
        return True

    # -- internals -------------------------------------------------------------------------------
    def _add(self, flow: Flow, item: T, *, front: bool) -> None:
        band, tenant = flow.band, flow.tenant
        flows = self._flows[band]
        fq = flows.get(tenant)
        active = self._active[band]
        if fq is None:
            fq = flows[tenant] = _FlowQueue(flow)
            if not front:
                active.append(tenant)
        elif front:
            active.remove(tenant)
        if front:  # its turn now, with the request it was given back
            active.appendleft(tenant)
            fq.credited = True
            fq.deficit += 1.0
            fq.items.appendleft(item)
        else:
            fq.items.append(item)
        self._where[item] = (band, tenant)
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        self._weights[tenant] = flow.weight

    def _forget(self, item: T, band: int, fq: _FlowQueue[T]) -> None:
        tenant = fq.flow.tenant
        del self._where[item]
        left = self._per_tenant[tenant] - 1
        if left:
            self._per_tenant[tenant] = left
        else:
            del self._per_tenant[tenant]
            del self._weights[tenant]
        if not fq.items:  # an emptied flow leaves the round and its credit with it (DRR)
            del self._flows[band][tenant]
            self._active[band].remove(tenant)

    def _furthest_over_share(self) -> str | None:
        """The tenant with the most requests waiting per unit of weight (ties: by name)."""
        if not self._per_tenant:
            return None
        return max(self._per_tenant, key=lambda t: (self._per_tenant[t] / self._weights[t], t))

    def _newest_of(self, tenant: str) -> T:
        """The tenant's most recently queued request in its least urgent band."""
        for band in reversed(range(BANDS)):
            fq = self._flows[band].get(tenant)
            if fq is not None and fq.items:
                return fq.items[-1]
        raise KeyError(tenant)  # pragma: no cover - callers pass tenants with requests waiting
