"""The in-process registry snapshot the gateway serves from: zero Redis calls per request.

How it stays in step with Redis:
- Every write publishes its new epoch and the records it changed (registry/write.lua). The
  listener applies a message whose epoch is the next one in one synchronous step (`apply`), so a
  write is visible here a pub/sub hop after it is acknowledged, at a cost that does not grow with
  the registry.
- A start, a gap in the epochs (a lost message), a reconnect of the listener or an epoch that went
  back does a full load: one MULTI read, parsed in small steps that yield to the event loop
  (registry.state.parse_steps), swapped in at once. Messages
  that arrive meanwhile are kept and applied on top of it.
- The epoch is also polled (one GET per `poll_interval`): an epoch ahead of the snapshot for two
  polls in a row means a message was lost, and a full load follows.

An epoch lower than the one held means Redis lost data (restarted without AOF, or a failover to a
stale replica). The watcher never silently goes back in time: it keeps the newer snapshot, sets
`regressed` and logs it; `refresh(accept_regression=True)` is the operator's explicit way forward.

    watcher = SnapshotWatcher(store, redis)
    await watcher.start()
    key = watcher.state.tenant_for_key(hash_key(secret, bearer))   # hot path: no I/O
    await watcher.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from registry.errors import RegistryError, RegistryUnavailable
from registry.redis_edge import drive
from registry.state import Change, Delta, RegistryState, parse_changes

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from registry.store import RegistryStore

log = logging.getLogger(__name__)
Message = tuple[int, float, list[Change]]


class SnapshotWatcher:
    """Keeps `state` in step with Redis via published changes, full loads and an epoch poll;
    survives Redis outages."""

    def __init__(
        self,
        store: RegistryStore,
        redis: Redis,
        *,
        poll_interval: float = 0.5,
        max_staleness: float = 300.0,
        catch_up_s: float = 1.0,
    ) -> None:
        self._store = store
        self._redis = redis
        self._poll_interval = poll_interval
        self._catch_up_s = catch_up_s
        self.max_staleness = max_staleness
        self._kinds = store.keyspace.snapshot_hashes
        self._state = RegistryState()
        self._synced_at: float | None = None
        self._redis_ok = False
        self.regressed = False
        self._lock = asyncio.Lock()  # one full load at a time
        self._loading = False
        self._pending: list[Message] = []  # messages that arrived during a full load
        self._load_task: asyncio.Task[None] | None = None
        self._behind: int | None = None  # an epoch the poll saw ahead of the snapshot
        self._changed = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        # Called synchronously with each new state and what changed, before any other task can
        # read it (metric label bounds must know a new tenant before its first request).
        self.on_change: Callable[[RegistryState, Delta], None] | None = None
        # Seconds from a write (Redis's clock) to its application here; a metric in the gateway.
        self.on_applied: Callable[[float], None] | None = None
        self.full_load_s: float | None = None  # the last full load (read and parse)
        self.full_loads = 0  # completed full loads (tests: applied changes needed none)

    @property
    def state(self) -> RegistryState:
        return self._state

    @property
    def redis_ok(self) -> bool:
        return self._redis_ok

    @property
    def age_s(self) -> float:
        """Seconds since the last successful sync (inf if never)."""
        return float("inf") if self._synced_at is None else time.monotonic() - self._synced_at

    @property
    def stale(self) -> bool:
        """True once the snapshot has not been confirmed for `max_staleness` seconds."""
        return self.age_s > self.max_staleness

    async def start(self) -> None:
        """Subscribe, then load (an unreachable Redis leaves the empty state and keeps retrying)."""
        self._running = True
        self._tasks = [asyncio.create_task(self._listen_loop(), name="registry-listen")]
        # Subscribed before the load: no write after the load's read goes unannounced.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(self._poll_interval * 4, 1.0)):
                await self._subscribed.wait()
        with contextlib.suppress(RegistryError):
            await self._full_load()
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="registry-poll"))

    async def stop(self) -> None:
        self._running = False  # the loops also check this, in case a library swallows a cancel
        tasks, self._tasks = self._tasks, []
        if self._load_task is not None:
            tasks.append(self._load_task)
            self._load_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def refresh(self, *, accept_regression: bool = False, full: bool = False) -> None:
        """Catch up with Redis now (after a write, to read it back here): wait for the current
        epoch's changes to arrive, else load everything. Raises RegistryUnavailable if Redis is
        unreachable. `full` always loads everything; `accept_regression` also takes an older
        epoch than the one held."""
        if full or accept_regression:
            await self._full_load(accept_regression=accept_regression)
            return
        epoch = await self._epoch()
        if epoch == self._state.epoch:
            self._confirmed()
            return
        if epoch > self._state.epoch and await self.wait_for_epoch(epoch, self._catch_up_s):
            return
        await self._full_load()

    async def wait_for_epoch(self, epoch: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until the snapshot holds `epoch` or newer; False after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while self._state.epoch < epoch:
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    # -- applying -------------------------------------------------------------------------------

    def _confirmed(self) -> None:
        self._redis_ok = True
        self._synced_at = time.monotonic()

    def _notify(self, delta: Delta) -> None:
        if self.on_change is not None:
            self.on_change(self._state, delta)
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_message(self, message: Message) -> None:
        if self._loading:
            self._pending.append(message)
            return
        epoch = message[0]
        if epoch <= self._state.epoch:
            return  # already held (a full load read past it)
        if epoch == self._state.epoch + 1 and not self.regressed:
            self._apply(message)
            return
        self._pending.append(message)  # a gap: load everything, then this on top
        self._start_full_load()

    def _apply(self, message: Message) -> None:
        epoch, written_at, changes = message
        try:
            delta = self._state.apply(epoch, changes)
        except Exception:  # a record the snapshot cannot read: load everything instead
            log.exception("registry change at epoch %d could not be applied", epoch)
            self._start_full_load()
            return
        self._confirmed()
        if self.on_applied is not None and written_at > 0:
            self.on_applied(max(0.0, time.time() - written_at))
        self._notify(delta)

    def _drain_pending(self) -> None:
        pending, self._pending = sorted(self._pending, key=lambda m: m[0]), []
        for message in pending:
            if message[0] == self._state.epoch + 1:
                self._apply(message)
            elif message[0] > self._state.epoch + 1:
                self._pending.append(message)  # still a gap: the poll loads again
                break

    def _start_full_load(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            return

        async def load() -> None:
            with contextlib.suppress(RegistryError):
                await self._full_load()

        self._load_task = asyncio.create_task(load(), name="registry-full-load")

    async def _full_load(self, *, accept_regression: bool = False) -> None:
        async with self._lock:
            self._loading = True
            started = time.perf_counter()
            try:
                new = await self._store.load_state()
                old = self._state  # unchanged meanwhile: messages are held while loading
                delta = await drive(new.diff_steps(old))
            except RegistryUnavailable:
                self._redis_ok = False
                raise
            finally:
                self._loading = False
            self.full_load_s = time.perf_counter() - started
            self.full_loads += 1
            self._confirmed()
            if new.epoch < old.epoch and not accept_regression:
                if not self.regressed:
                    log.error(
                        "registry epoch went back from %d to %d (Redis lost data?); "
                        "keeping the newer snapshot",
                        old.epoch,
                        new.epoch,
                    )
                self.regressed = True
                self._pending.clear()
                return
            # Out of a regression, an equal epoch is not the same state: after a failover the new
            # master numbers its own writes from where the replica stood.
            was_regressed, self.regressed = self.regressed, False
            if new.epoch != old.epoch or accept_regression or was_regressed:
                self._state = new
                self._notify(delta)
            self._drain_pending()

    # -- loops ----------------------------------------------------------------------------------

    async def _epoch(self) -> int:
        try:
            return await self._store.epoch()
        except RegistryUnavailable:
            self._redis_ok = False
            raise

    async def _check(self) -> None:
        """After a reconnect: messages may have been lost meanwhile."""
        if await self._epoch() != self._state.epoch:
            await self._full_load()
        else:
            self._confirmed()

    async def _poll_loop(self) -> None:
        while self._running:
            try:
                epoch = await self._epoch()
                held = self._state.epoch
                if epoch == held:
                    self._behind = None
                    self._confirmed()
                elif epoch < held or self.regressed:
                    await self._full_load()
                elif self._behind is not None and held < self._behind:
                    self._behind = None  # behind for a whole poll interval: a message was lost
                    await self._full_load()
                else:
                    self._behind = epoch  # its message may still be on the way
            except RegistryUnavailable:
                self._redis_ok = False
            except Exception:  # a bug must not kill the loop that keeps the snapshot fresh
                log.exception("registry poll failed")
            await asyncio.sleep(self._poll_interval)

    async def _listen_loop(self) -> None:
        channel = self._store.channel
        first = True
        while self._running:
            pubsub: PubSub | None = None
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(channel)
                self._subscribed.set()
                if not first:
                    with contextlib.suppress(RegistryError):
                        await self._check()
                first = False
                while self._running:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._on_message(parse_changes(msg["data"], self._kinds))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: the poll loop covers us meanwhile
                log.debug("registry listener reconnecting: %s", type(exc).__name__)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._poll_interval)
