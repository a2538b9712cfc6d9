"""The pool of vLLM replicas: health, residency of adapters, affinity routing, per-replica caps.

    pool = EnginePool(settings.engines, session, config)
    await pool.start()
    lease = await pool.acquire(adapter_version)   # adapter resident on lease.replica
    try:
        ... send to lease.replica.url with model=lease.engine_model ...
    finally:
        pool.release(lease)                          # synchronous: safe under cancellation
    await pool.stop()

Residency is what this process loaded, reconciled against each engine's `GET /v1/models` on every
health probe: an engine that restarted lost its adapters and gets them back on the next request.
Loads go through a per-(replica, adapter) lock and are idempotent; the artifact digest is re-checked
before every load. Cold adapters are unloaded deliberately (least recently used, never while a
request uses them) instead of leaving the engine's own LRU to thrash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from adapters.artifact import verify_digest
from adapters.engine_client import list_adapters, load_adapter, probe_health, unload_adapter
from adapters.errors import EngineLoadFailed, EngineUnavailable
from gateway.engines.fairqueue import FairQueue, Flow, TenantQueueFull
from gateway.engines.routing import Choice, ReplicaView, choose_replica
from gateway.errors import ApiError
from registry.compact import AnyAdapter

log = logging.getLogger("loragate.engines")
# Preloads and other gateway-internal acquires: most urgent band, outside any tenant's share.
SYSTEM_FLOW = Flow("-", band=0)


@dataclass(frozen=True)
class PoolConfig:
    base_model: str
    adapter_store: Path  # where the gateway reads artifacts (digest checks)
    engine_adapter_root: Path  # where the engines read the same artifacts
    max_loras: int = 2
    max_cpu_loras: int = 8
    max_concurrency: int = 64  # per replica
    queue_size: int = 256  # requests waiting for a slot, pool-wide
    tenant_queue_size: int = 64  # of one tenant (gateway/engines/fairqueue.py)
    queue_timeout_s: float = 5.0
    health_interval_s: float = 1.0
    eject_after_failures: int = 3
    eject_base_s: float = 1.0
    eject_max_s: float = 30.0
    max_ejected_fraction: float = 0.5


@dataclass
class Replica:
    name: str
    url: str
    healthy: bool = False
    in_flight: int = 0
    failures: int = 0
    slow_probes: int = 0  # health probes in a row that timed out
    ejections: int = 0
    ejected_until: float = 0.0
    resident: OrderedDict[str, AnyAdapter] = field(default_factory=OrderedDict)
    users: dict[str, int] = field(default_factory=dict)  # engine name -> requests in flight
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    busy_s: float = 0.0  # seconds with at least one request in flight, up to busy_since
    busy_since: float = 0.0
    # The same busy periods on the wall clock, for the fleet's engine-time union (gateways on
    # several hosts can only be lined up by wall time); drained by `take_busy`.
    busy_since_wall: float = 0.0
    busy_log: list[tuple[float, float]] = field(default_factory=list)

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def busy_seconds(self, now: float) -> float:
        """Cumulative seconds this gateway had a request in flight here (engine-time share)."""
        return self.busy_s + (now - self.busy_since if self.in_flight > 0 else 0.0)

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


@dataclass
class Lease:
    replica: Replica
    engine_model: str
    miss: bool
    engine_name: str | None
    released: bool = False


def queue_limited() -> ApiError:
    """A tenant's own excess in the fair queue (429, Retry-After)."""
    return ApiError(
        "queue_limited",
        "Too many of this tenant's requests are waiting for an engine; retry shortly.",
    )


class EnginePool:
    def __init__(
        self,
        urls: list[str],
        session: aiohttp.ClientSession,
        config: PoolConfig,
        *,
        on_change: Callable[[EnginePool], None] | None = None,
        on_route: Callable[[bool], None] | None = None,
        on_load: Callable[[str, str], None] | None = None,
        on_wait: Callable[[str, float], None] | None = None,
    ) -> None:
        """`on_change` runs after every state change (gauges); `on_route(hit)` once per adapter
        request routed, so the adapter-miss rate is measured where the decision is made;
        `on_load(replica, "ok" | "error")` once per load call made to an engine;
        `on_wait(tenant, seconds)` once per tenant acquire, whatever its outcome."""
        self.replicas = [Replica(f"engine-{i}", url.rstrip("/")) for i, url in enumerate(urls)]
        self._by_name = {r.name: r for r in self.replicas}
        self.session = session
        self.config = config
        self._on_change = on_change
        self._on_route = on_route
        self._on_load = on_load
        self._on_wait = on_wait
        # Requests waiting for a slot, fair between tenants. A waiter's result: True = a slot is
        # free for it, False = pushed out of a full queue (its tenant was furthest over share).
        self._waiters: FairQueue[asyncio.Future[bool]] = FairQueue(
            capacity=config.queue_size, per_tenant=min(config.tenant_queue_size, config.queue_size)
        )
        # Waiters woken for a free slot that have not yet taken it: while any are on their way,
        # a new request queues instead of taking the slot (no barging past the fair order).
        self._handoffs = 0
        self._task: asyncio.Task[None] | None = None
        self.hits = 0
        self.misses = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.probe_all()
        self._task = asyncio.create_task(self._health_loop(), name="engine-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                await self.probe_all()
            except Exception:  # pragma: no cover - the loop must survive anything
                log.exception("health probe failed")

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(r) for r in self.replicas))
        self._changed()
        if self._waiters:  # a replica came back (or its ejection ended): its free slots serve
            self._wake(self._free_slots())  # the queue now, not when some request finishes

    async def _probe(self, replica: Replica) -> None:
        status = await probe_health(self.session, replica.url)
        if status != "ok":
            # A refused connection or an error answer takes the replica out at once; one probe
            # that times out does not (a busy engine answers late: under load the last healthy
            # replica flapped and every request in the gap got 503).
            replica.slow_probes = replica.slow_probes + 1 if status == "slow" else 0
            if status == "slow" and replica.slow_probes < 2:
                return
            if replica.healthy:
                log.warning("engine %s unhealthy (%s)", replica.name, status)
            replica.healthy = False
            return
        replica.slow_probes = 0
        try:
            loaded = await list_adapters(self.session, replica.url)
        except EngineUnavailable:
            replica.healthy = False
            return
        # Reconcile: forget what the engine no longer has (restart, external unload).
        for name in [n for n in replica.resident if n not in loaded]:
            del replica.resident[name]
        if not replica.healthy:
            log.info("engine %s healthy", replica.name)
            replica.failures = 0
            replica.ejected_until = 0.0
        replica.healthy = True

    # -- routing ---------------------------------------------------------------------------------
    def views(self) -> list[ReplicaView]:
        now = time.monotonic()
        slots = max(1, self.config.max_cpu_loras)
        return [
            ReplicaView(
                name=r.name,
                available=r.available(now),
                in_flight=r.in_flight,
                cap=self.config.max_concurrency,
                resident=r.resident.keys(),  # a live view: read within this call only
                slots=slots,
            )
            for r in self.replicas
        ]

    def shedding(self, flow: Flow = SYSTEM_FLOW) -> bool:
        """No replica has a free slot and one more request of `flow` would be refused as its
        tenant's excess: the caller can refuse it before doing any work for it."""
        if not self._waiters.would_refuse(flow):
            return False
        now = time.monotonic()
        cap = self.config.max_concurrency
        return not any(r.available(now) and r.in_flight < cap for r in self.replicas)

    def queue_depths(self) -> dict[str, int]:
        """Requests waiting for a slot per tenant (tenants with none are absent)."""
        return self._waiters.depths()

    def _free_slots(self) -> int:
        """Slots free on available replicas, less those already promised to woken waiters."""
        now = time.monotonic()
        cap = self.config.max_concurrency
        free = sum(max(0, cap - r.in_flight) for r in self.replicas if r.available(now))
        return free - self._handoffs

    def any_available(self) -> bool:
        now = time.monotonic()
        return any(r.available(now) for r in self.replicas)

    async def acquire(
        self,
        adapter: AnyAdapter | None,
        *,
        exclude: frozenset[str] = frozenset(),
        count: bool = True,
        flow: Flow = SYSTEM_FLOW,
    ) -> Lease:
        """Take a slot on a replica with `adapter` resident; give it back with `release` (sync).

        `count=False` (preloads) keeps the hit/miss numbers about tenant requests only. `flow`:
        whose request it is, for the fair queue when every slot is taken.
        """
        engine_name = adapter.engine_name if adapter is not None else None
        replica, miss = await self._acquire(engine_name, exclude, flow, count=count)
        lease = Lease(replica, engine_name or self.config.base_model, miss, engine_name)
        if engine_name is not None:
            replica.users[engine_name] = replica.users.get(engine_name, 0) + 1
        try:
            if adapter is not None:
                await self.ensure_resident(replica, adapter)
        except EngineUnavailable:
            # Unreachable or busy: treat it as down until the next probe says otherwise, so the
            # caller's retry goes to another replica instead of the same one again.
            replica.healthy = False
            self.report_failure(replica)
            self.release(lease)  # after: its change callback sees the replica down
            raise
        except BaseException:
            self.release(lease)
            raise
        return lease

    def release(self, lease: Lease) -> None:
        """Synchronous and idempotent, so it is safe in `finally` blocks under cancellation."""
        if lease.released:
            return
        lease.released = True
        replica = lease.replica
        if lease.engine_name is not None:
            left = replica.users.get(lease.engine_name, 1) - 1
            if left <= 0:
                replica.users.pop(lease.engine_name, None)
            else:
                replica.users[lease.engine_name] = left
        replica.in_flight -= 1
        if replica.in_flight == 0:
            replica.busy_s += time.monotonic() - replica.busy_since
            replica.end_busy(time.time())
        self._changed()
        self._wake(1)

    def _wake(self, n: int) -> None:
        """Wake up to `n` queued requests in fair order (each re-runs the routing choice)."""
        while n > 0:
            waiter = self._waiters.pop()
            if waiter is None:
                return
            if not waiter.done():
                waiter.set_result(True)
                self._handoffs += 1
                n -= 1

    def forget(self, replica: Replica, engine_name: str) -> None:
        """The engine no longer has the adapter (it answered 404): load it again next time."""
        replica.resident.pop(engine_name, None)
        self._changed()

    async def _acquire(
        self, engine_name: str | None, exclude: frozenset[str], flow: Flow, *, count: bool = True
    ) -> tuple[Replica, bool]:
        if not any(r.available(time.monotonic()) for r in self.replicas if r.name not in exclude):
            raise ApiError("engine_unavailable", "No engine replica is available; retry shortly.")
        choice = None
        if not self._waiters and self._handoffs == 0:
            choice = choose_replica(self.views(), engine_name, exclude=exclude)
        if choice is None:
            choice = await self._wait_turn(engine_name, exclude, flow)
        else:
            self._waited(flow, 0.0)
        replica = self._by_name[choice.replica]
        replica.in_flight += 1
        if replica.in_flight == 1:
            replica.busy_since = time.monotonic()
            replica.busy_since_wall = time.time()
        if engine_name is not None and count:
            if choice.miss:
                self.misses += 1
            else:
                self.hits += 1
            if self._on_route is not None:
                self._on_route(not choice.miss)
        self._changed()
        return replica, choice.miss

    async def _wait_turn(
        self, engine_name: str | None, exclude: frozenset[str], flow: Flow
    ) -> Choice:
        """Queue in the fair queue until a slot is handed over and the routing choice finds it."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        try:
            pushed_out = self._waiters.push(flow, waiter)
        except TenantQueueFull:
            self._waited(flow, 0.0)
            raise queue_limited() from None
        if pushed_out is not None and not pushed_out.done():
            pushed_out.set_result(False)
        self._wake(self._free_slots())  # work-conserving: a free slot serves the queue now
        started = time.monotonic()
        deadline = loop.time() + self.config.queue_timeout_s
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        granted = await waiter
                except BaseException:
                    self._waiters.remove(waiter)
                    if waiter.done() and not waiter.cancelled() and waiter.result():
                        self._handoffs -= 1  # handed a slot it will not take: pass it on
                        self._wake(1)
                    raise
                if not granted:
                    raise queue_limited()
                self._handoffs -= 1
                choice = choose_replica(self.views(), engine_name, exclude=exclude)
                if choice is not None:
                    return choice
                # Beaten to the slot (or it is on an excluded replica): keep its turn.
                waiter = loop.create_future()
                self._waiters.push_front(flow, waiter)
        except TimeoutError:
            raise ApiError("overloaded", "The gateway is at capacity; retry shortly.") from None
        finally:
            self._waited(flow, time.monotonic() - started)

    def _waited(self, flow: Flow, seconds: float) -> None:
        if self._on_wait is not None and flow is not SYSTEM_FLOW:
            self._on_wait(flow.tenant, seconds)

    # -- residency -------------------------------------------------------------------------------
    async def ensure_resident(self, replica: Replica, adapter: AnyAdapter) -> None:
        name = adapter.engine_name
        if name in replica.resident:
            replica.resident.move_to_end(name)
            return
        lock = replica.locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in replica.resident:
                replica.resident.move_to_end(name)
                return
            local = self.config.adapter_store / adapter.path
            await asyncio.to_thread(verify_digest, local, adapter.digest)
            await self._evict_for_one(replica)
            engine_path = str(self.config.engine_adapter_root / adapter.path)
            try:
                await load_adapter(self.session, replica.url, name, engine_path)
            except BaseException:
                self._loaded(replica, "error")
                raise
            self._loaded(replica, "ok")
            replica.resident[name] = adapter
            log.info("loaded adapter on %s", replica.name)
            self._changed()

    async def _evict_for_one(self, replica: Replica) -> None:
        """Make room for one more adapter: unload least recently used idle ones over the limit."""
        limit = max(1, self.config.max_cpu_loras)
        while len(replica.resident) >= limit:
            idle = [n for n in replica.resident if replica.users.get(n, 0) == 0]
            if not idle:
                return  # everything is busy: let the engine's own LRU cope
            victim = idle[0]
            with contextlib.suppress(EngineLoadFailed):
                await unload_adapter(self.session, replica.url, victim)
            replica.resident.pop(victim, None)

    async def preload(self, adapter: AnyAdapter) -> None:
        """Load an adapter on one available replica before its release takes traffic."""
        self.release(await self.acquire(adapter, count=False))

    async def unload_everywhere(self, engine_name: str) -> None:
        """Unload an adapter no release references any more, where no request still uses it."""
        for replica in self.replicas:
            if engine_name in replica.resident and replica.users.get(engine_name, 0) == 0:
                with contextlib.suppress(EngineLoadFailed, EngineUnavailable):
                    await unload_adapter(self.session, replica.url, engine_name)
                replica.resident.pop(engine_name, None)
                self._changed()

    # -- passive health --------------------------------------------------------------------------
    def report_failure(self, replica: Replica) -> None:
        replica.failures += 1
        if replica.failures < self.config.eject_after_failures:
            return
        now = time.monotonic()
        ejected = sum(1 for r in self.replicas if now < r.ejected_until)
        if (ejected + 1) / len(self.replicas) > self.config.max_ejected_fraction:
            return  # never eject so many that the rest drown
        backoff = min(self.config.eject_max_s, self.config.eject_base_s * 2**replica.ejections)
        replica.ejections += 1
        replica.ejected_until = now + backoff
        replica.failures = 0
        log.warning("engine %s ejected for %.1fs", replica.name, backoff)
        self._changed()

    def report_success(self, replica: Replica) -> None:
        replica.failures = 0
        if replica.ejections and time.monotonic() >= replica.ejected_until:
            replica.ejections = 0

    def _loaded(self, replica: Replica, result: str) -> None:
        if self._on_load is not None:
            self._on_load(replica.name, result)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)
