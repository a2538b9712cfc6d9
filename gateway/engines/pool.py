"""The pool of vLLM replicas: membership, health, residency, affinity routing, per-replica caps.

    pool = EnginePool(discovery_from(settings.engines), session, config)
    await pool.start()
    lease = await pool.acquire(adapter_version)   # adapter resident on lease.replica
    try:
        ... send to lease.replica.url with model=lease.engine_model ...
    finally:
        pool.release(lease)                          # synchronous: safe under cancellation
    await pool.stop()

One pool per gateway process; several gateways act as one pool because each learns from the
engines, not from the others: membership from discovery (a static list or DNS, re-resolved),
residency from each engine's `GET /v1/models` (what *any* gateway loaded), load from the engine's
`/metrics` plus what this gateway sent since the last read, and placement by rendezvous hashing
(gateway/engines/placement.py), which every gateway computes alike. The per-replica concurrency
cap is divided among the live gateways (`set_live_gateways`, from the limiter's heartbeats), so the
engine never sees more than the cap in total.

Capacity eviction is the engine's own LRU (vLLM reloads an evicted adapter from disk by itself);
the pool never unloads an adapter because it needs room, so no gateway can pull an adapter from
under another gateway's request. Adapters no release references any more are unloaded fleet-wide
after a grace period (`sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence

import aiohttp

from adapters.artifact import verify_digest
from adapters.errors import (
    EngineLoadFailed,
    EngineUnavailable,
    NoReplicaAvailable,
    PoolOverloaded,
    QueueLimited,
)
from adapters.objectstore import DIGEST_RE
from gateway.engines.discovery import Discovery, Endpoint, StaticDiscovery
from gateway.engines.engine_api import EngineApi, HttpEngineApi
from gateway.engines.fairqueue import FairQueue, Flow, TenantQueueFull
from gateway.engines.replica import Lease, PoolConfig, Replica
from gateway.engines.residency import Orphans
from gateway.engines.routing import Choice, ReplicaView, choose_replica
from registry.compact import AnyAdapter

log = logging.getLogger("loragate.engines")

# Preloads and other gateway-internal acquires: most urgent band, outside any tenant's share.
SYSTEM_FLOW = Flow("-", band=0)


class EnginePool:
    def __init__(
        self,
        engines: Discovery | Sequence[str],
        api: EngineApi | aiohttp.ClientSession,
        config: PoolConfig,
        *,
        on_change: Callable[[EnginePool], None] | None = None,
        on_route: Callable[[bool], None] | None = None,
        on_load: Callable[[str, str], None] | None = None,
        referenced: Callable[[], Collection[str] | None] | None = None,
        on_wait: Callable[[str, float], None] | None = None,
    ) -> None:
        """`on_change` runs after every state change (gauges); `on_route(hit)` once per adapter
        request routed, so the adapter-miss rate is measured where the decision is made;
        `on_load(replica, "ok" | "error")` once per load call made to an engine; `referenced()`
        names the engine adapters some release still references (None from it: the registry is
        not known well enough to say, sweep nothing; no callable: never unload);
        `on_wait(tenant, seconds)` once per tenant acquire, whatever its outcome."""
        self.discovery = engines if not isinstance(engines, Sequence) else StaticDiscovery(engines)
        self.api: EngineApi = (
            api if not isinstance(api, aiohttp.ClientSession) else HttpEngineApi(api)
        )
        self.replicas: list[Replica] = []
        self._by_name: dict[str, Replica] = {}
        self.config = config
        self.live_gateways = 1
        self._on_change = on_change
        self._on_route = on_route
        self._on_load = on_load
        self._referenced = referenced
        self._orphans = Orphans(config.unload_grace_s)
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
        if isinstance(self.discovery, StaticDiscovery):  # known now: no need to wait for start()
            self.set_endpoints(self.discovery.endpoints)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh_members()
        await self.probe_all()
        self._task = asyncio.create_task(self._health_loop(), name="engine-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _health_loop(self) -> None:
        next_discovery = next_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                now = time.monotonic()
                if self.discovery.dynamic and now >= next_discovery:
                    next_discovery = now + self.config.discovery_interval_s
                    await self.refresh_members()
                await self.probe_all()
                if self._referenced is not None and now >= next_sweep:
                    next_sweep = now + self.config.sweep_interval_s
                    referenced = self._referenced()
                    if referenced is not None:
                        await self.sweep(referenced)
            except Exception:  # pragma: no cover - the loop must survive anything
                log.exception("health probe failed")

    # -- membership ------------------------------------------------------------------------------
    async def refresh_members(self) -> None:
        endpoints = await self.discovery.resolve()
        if endpoints is not None:  # None: discovery failed, keep what we know
            self.set_endpoints(endpoints)

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Replicas join at once (after their first probe) and leave by draining."""
        seen = set()
        for ep in endpoints:
            seen.add(ep.name)
            replica = self._by_name.get(ep.name)
            if replica is None:
                replica = Replica(ep.name, ep.url.rstrip("/"))
                self.replicas.append(replica)
                self._by_name[ep.name] = replica
                log.info("engine %s joined", ep.name)
            elif replica.url != ep.url.rstrip("/"):  # same identity, new address: probe it anew
                replica.url, replica.healthy = ep.url.rstrip("/"), False
                replica.resident.clear()
            replica.leaving = False
        for replica in self.replicas:
            if replica.name not in seen and not replica.leaving:
                replica.leaving = True
                log.info("engine %s leaving (drains %d requests)", replica.name, replica.in_flight)
        self._drop_drained()
        self._changed()

    def _drop_drained(self) -> None:
        gone = [r for r in self.replicas if r.leaving and r.in_flight == 0]
        for replica in gone:
            self.replicas.remove(replica)
            del self._by_name[replica.name]

    def set_live_gateways(self, n: int) -> None:
        """How many gateways share each replica's cap (the limiter's heartbeats count them)."""
        self.live_gateways = max(1, n)

    def share(self) -> int:
        """This gateway's part of a replica's concurrency cap."""
        return max(1, self.config.max_concurrency // self.live_gateways)

    # -- health ----------------------------------------------------------------------------------
    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(r) for r in self.replicas if not r.leaving))
        self._drop_drained()
        self._changed()
        if self._waiters:  # a replica came back (or its ejection ended): its free slots serve
            self._wake(self._free_slots())  # the queue now, not when some request finishes

    async def _probe(self, replica: Replica) -> None:
        status = await self.api.health(replica.url)
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
        replica.loaded_here.clear()
        try:
            listed = await self.api.adapters(replica.url)
        except EngineUnavailable:
            replica.healthy = False
            return
        report = await self.api.load_report(replica.url)
        # What the engine holds, whoever loaded it (a restart forgets, another gateway adds).
        replica.resident = set(listed) | replica.loaded_here
        replica.reported = report.requests if report is not None else None
        replica.sent_since_read = 0
        if not replica.healthy:
            log.info("engine %s healthy", replica.name)
            replica.failures = 0
            replica.ejected_until = 0.0
        replica.healthy = True

    # -- routing ---------------------------------------------------------------------------------
    def views(self) -> list[ReplicaView]:
        now = time.monotonic()
        share = self.share()
        cap = self.config.max_concurrency
        return [
            ReplicaView(
                name=r.name,
                available=r.available(now),
                open=r.in_flight < share,
                load=r.load(),
                cap=cap,
                resident=r.resident,  # a live view: read within this call only
            )
            for r in self.replicas
        ]

    def shedding(self, flow: Flow = SYSTEM_FLOW) -> bool:
        """No replica has a free slot and one more request of `flow` would be refused as its
        tenant's excess: the caller can refuse it before doing any work for it."""
        if not self._waiters.would_refuse(flow):
            return False
        now = time.monotonic()
        share = self.share()
        return not any(r.available(now) and r.in_flight < share for r in self.replicas)

    def queue_depths(self) -> dict[str, int]:
        """Requests waiting for a slot per tenant (tenants with none are absent)."""
        return self._waiters.depths()

    def _free_slots(self) -> int:
        """This gateway's slots free on available replicas, less those already promised to woken
        waiters."""
        now = time.monotonic()
        share = self.share()
        free = sum(max(0, share - r.in_flight) for r in self.replicas if r.available(now))
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
            if replica.leaving:
                self._drop_drained()
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
        replica.resident.discard(engine_name)
        self._changed()

    async def _acquire(
        self, engine_name: str | None, exclude: frozenset[str], flow: Flow, *, count: bool = True
    ) -> tuple[Replica, bool]:
        now = time.monotonic()
        if not any(r.available(now) for r in self.replicas if r.name not in exclude):
            raise NoReplicaAvailable("no engine replica is available")
        choice = None
        if not self._waiters and self._handoffs == 0:
            choice = choose_replica(self.views(), engine_name, exclude=exclude)
        if choice is None:
            choice = await self._wait_turn(engine_name, exclude, flow)
        else:
            self._waited(flow, 0.0)
        replica = self._by_name[choice.replica]
        replica.in_flight += 1
        replica.sent_since_read += 1
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
            raise QueueLimited("this tenant's share of the wait queue is full") from None
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
                    raise QueueLimited("pushed out of a full wait queue: over its share")
                self._handoffs -= 1
                choice = choose_replica(self.views(), engine_name, exclude=exclude)
                if choice is not None:
                    return choice
                # Beaten to the slot (or it is on an excluded replica): keep its turn.
                waiter = loop.create_future()
                self._waiters.push_front(flow, waiter)
        except TimeoutError:
            raise PoolOverloaded("no replica slot freed up in time") from None
        finally:
            self._waited(flow, time.monotonic() - started)

    def _waited(self, flow: Flow, seconds: float) -> None:
        if self._on_wait is not None and flow is not SYSTEM_FLOW:
            self._on_wait(flow.tenant, seconds)

    # -- residency -------------------------------------------------------------------------------
    async def ensure_resident(self, replica: Replica, adapter: AnyAdapter) -> None:
        """Load the adapter unless the engine already holds it. No capacity eviction here: past
        --max-cpu-loras the engine's own LRU evicts and reloads by itself (deploy/ENGINE.md)."""
        name = adapter.engine_name
        if name in replica.resident:
            return
        lock = replica.locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in replica.resident:
                return
            if self.config.verify_artifacts and not self._engine_checks(adapter):
                local = self.config.adapter_store / adapter.path
                await asyncio.to_thread(verify_digest, local, adapter.digest)
            engine_path = str(self.config.engine_adapter_root / adapter.path)
            try:
                await self.api.load(replica.url, name, engine_path)
            except BaseException:
                self._loaded(replica, "error")
                raise
            self._loaded(replica, "ok")
            replica.resident.add(name)
            replica.loaded_here.add(name)
            log.info("loaded adapter on %s", replica.name)
            self._changed()
        # Resident now: later callers return before the lock, so it need not outlive the load
        # (one lock per adapter ever seen would grow with the tenant count).
        replica.locks.pop(name, None)

    def _engine_checks(self, adapter: AnyAdapter) -> bool:
        """Whether the engine fetches this artifact by digest and checks it where it reads it."""
        m = DIGEST_RE.fullmatch(adapter.digest)
        return self.config.engines_fetch and m is not None and adapter.path == f"sha256/{m[1]}"

    async def preload(self, adapter: AnyAdapter) -> None:
        """Load an adapter on its replica before its release takes traffic."""
        self.release(await self.acquire(adapter, count=False))

    async def unload_everywhere(self, engine_name: str) -> None:
        """Unload an adapter no release references any more, where no request still uses it."""
        for replica in list(self.replicas):
            if engine_name in replica.resident and replica.users.get(engine_name, 0) == 0:
                with contextlib.suppress(EngineLoadFailed, EngineUnavailable):
                    await self.api.unload(replica.url, engine_name)
                replica.resident.discard(engine_name)
                self._changed()

    async def sweep(self, referenced: Collection[str], now: float | None = None) -> list[str]:
        """Unload, on every replica, the loragate adapters the engines hold that no release has
        referenced for `unload_grace_s` (every gateway sweeps alike; unloading is idempotent)."""
        held: set[str] = set()
        for replica in self.replicas:
            held |= replica.resident
        due = self._orphans.due(held, referenced, time.monotonic() if now is None else now)
        for name in due:
            log.info("unloading an adapter no release references")
            await self.unload_everywhere(name)
        return due

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
