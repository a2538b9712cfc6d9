"""The in-process registry snapshot the gateway serves from: zero Redis calls per request.

Why a whole-state snapshot: the registry is small (tenants, keys, versions, releases, aliases) and
changes rarely, so the simplest correct cache is "reload everything, atomically, when the epoch
moves". Every write bumps the epoch and publishes it; the watcher listens on that channel and also
polls the epoch (one GET per `poll_interval`) so a missed message still lands within about a second.

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
from registry.state import RegistryState

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from registry.store import RegistryStore

log = logging.getLogger(__name__)


class SnapshotWatcher:
    """Keeps `state` in step with Redis via pub/sub plus an epoch poll; survives Redis outages."""

    def __init__(
        self,
        store: RegistryStore,
        redis: Redis,
        *,
        poll_interval: float = 0.5,
        max_staleness: float = 300.0,
    ) -> None:
        self._store = store
        self._redis = redis
        self._poll_interval = poll_interval
        self.max_staleness = max_staleness
        self._state = RegistryState()
        self._synced_at: float | None = None
        self._redis_ok = False
        self.regressed = False
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        # Called synchronously with each new state, before any other task can read it (metric
        # label bounds must know a new tenant before its first request is metered).
        self.on_change: Callable[[RegistryState], None] | None = None

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
        """Initial load (an unreachable Redis leaves the empty state and keeps retrying)."""
        with contextlib.suppress(RegistryError):
            await self.refresh()
        self._running = True
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="registry-poll"),
            asyncio.create_task(self._listen_loop(), name="registry-listen"),
        ]

    async def stop(self) -> None:
        self._running = False  # the loops also check this, in case a library swallows a cancel
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def refresh(self, *, accept_regression: bool = False) -> None:
        """Reload the whole state now; raises RegistryUnavailable if Redis is unreachable."""
        async with self._lock:
            try:
                new = await self._store.load_state()
            except RegistryUnavailable:
                self._redis_ok = False
                raise
            self._redis_ok = True
            self._synced_at = time.monotonic()
            if new.epoch < self._state.epoch and not accept_regression:
                if not self.regressed:
                    log.error(
                        "registry epoch went back from %d to %d (Redis lost data?); "
                        "keeping the newer snapshot",
                        self._state.epoch,
                        new.epoch,
                    )
                self.regressed = True
                return
            # Out of a regression, an equal epoch is not the same state: after a failover the new
            # master numbers its own writes from where the replica stood.
            was_regressed, self.regressed = self.regressed, False
            if new.epoch != self._state.epoch or accept_regression or was_regressed:
                self._state = new
                if self.on_change is not None:
                    self.on_change(new)
                self._changed.set()
                self._changed = asyncio.Event()

    async def wait_for_epoch(self, epoch: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until the snapshot holds `epoch` or newer; False after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while self._state.epoch < epoch:
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def _sync_if_behind(self, epoch: int) -> None:
        if epoch != self._state.epoch or self.regressed:
            await self.refresh()
        else:
            self._redis_ok = True
            self._synced_at = time.monotonic()

    async def _poll_loop(self) -> None:
        while self._running:
            try:
                await self._sync_if_behind(await self._store.epoch())
            except RegistryUnavailable:
                self._redis_ok = False
            except Exception:  # a bug must not kill the loop that keeps the snapshot fresh
                log.exception("registry poll failed")
            await asyncio.sleep(self._poll_interval)

    async def _listen_loop(self) -> None:
        channel = self._store.keyspace.channel
        while self._running:
            pubsub: PubSub | None = None
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(channel)
                while self._running:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        await self._sync_if_behind(int(msg["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: the poll loop covers us meanwhile
                log.debug("registry listener reconnecting: %s", type(exc).__name__)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._poll_interval)
