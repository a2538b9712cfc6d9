"""The canary guard against a real redis-server: it rolls back through the registry's
compare-and-set, audits the numbers, counts the metric, and of racing guards exactly one wins.
Each `Gateway` here publishes its windows to the fleet (registry/fleet.py) under its own id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from adapters.artifact import ArtifactInfo
from gateway.observability.fleet import FleetWindows
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.series import SeriesKey
from gateway.observability.windows import Windows
from gateway.rollout.guard import ACTOR, CanaryGuard
from gateway.settings import CanaryConfig
from registry import rollout
from registry.compact import AliasRec, AnyAlias, alias_rec
from registry.errors import RegistryUnavailable
from registry.fleet import FleetStore
from registry.models import Thresholds
from registry.snapshot import SnapshotWatcher
from registry.store import RegistryStore
from tests.fixtures.redis import RedisServer

THRESHOLDS = Thresholds(min_requests=10, max_error_rate_delta=0.05)


async def _seed(store: RegistryStore) -> None:
    """acme/support: r1 stable, r2 canary at 50%."""
    await store.create_tenant("acme", actor="root")
    info = ArtifactInfo(
        path=Path("/store/acme/a1"), relpath="acme/a1", digest="sha256:" + "ab" * 32,
        base_model="tiny", rank=8, alpha=16.0, target_modules=("q_proj",), size_bytes=1,
    )  # fmt: skip
    await store.register_adapter_version("acme", "lora", info, actor="root")
    await store.create_release("acme", "support", adapter="lora@1", prompt=None, actor="root")
    await store.create_release(
        "acme", "support", adapter="lora@1", prompt=None, thresholds=THRESHOLDS, actor="root"
    )
    await store.mutate_alias(
        "acme", "support", expected_revision=1, actor="root", action="canary",
        change=lambda a: rollout.start_canary(a, "support-r2", 0.5, now=0.0),
    )  # fmt: skip


class Gateway:
    """What one gateway process holds for the guard: its own watcher, windows and metrics."""

    made = 0

    def __init__(
        self,
        store: RegistryStore,
        redis: aioredis.Redis,
        config: CanaryConfig,
        *,
        lease_s: float = 5.0,
        fleet_timeout: float = 2.0,
    ) -> None:
        Gateway.made += 1
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, currency="USD", engines=[])
        self.watcher = SnapshotWatcher(store, redis, poll_interval=0.2, max_staleness=60)
        self.windows = Windows(config)
        fleet_store = FleetStore(redis, timeout=fleet_timeout)
        self.fleet = FleetWindows(
            self.windows, fleet_store, f"gw-{Gateway.made}", self.metrics, lease_s=lease_s
        )
        self.guard = CanaryGuard(self.fleet, store, self.watcher, self.metrics)

    def traffic(self, arm: str, release: str, n: int, *, failed: int = 0) -> None:
        for i in range(n):
            status = "server_error" if i < failed else "ok"
            key = SeriesKey("acme", "support", release, arm)
            self.windows.observe(key, status, 0.05, False, False)

    def gauge(self, name: str) -> float | None:
        return self.registry.get_sample_value(name)

    def rollbacks(self) -> float:
        value = self.registry.get_sample_value(
            "loragate_auto_rollbacks_total", {"tenant": "acme", "model": "support"}
        )
        return value or 0.0


@pytest.fixture
async def gateways(
    registry_store: RegistryStore, redis_client: aioredis.Redis
) -> AsyncIterator[list[Gateway]]:
    await _seed(registry_store)
    made = [Gateway(registry_store, redis_client, CanaryConfig()) for _ in range(3)]
    for gw in made:
        await gw.watcher.start()
        gw.metrics.set_label_universe({"acme"}, {("acme", "support")}, {("acme", "support-r1")})
    yield made
    for gw in made:
        await gw.watcher.stop()


async def test_bad_canary_is_rolled_back_with_the_numbers_in_the_audit(
    gateways: list[Gateway], registry_store: RegistryStore
) -> None:
    gw = gateways[0]
    gw.traffic("stable", "support-r1", 30)
    gw.traffic("canary", "support-r2", 9, failed=9)
    assert await gw.guard.tick() == []  # 9 < min_requests: wait
    gw.traffic("canary", "support-r2", 1, failed=1)
    (action,) = await gw.guard.tick()
    assert (action.action, action.won) == ("auto_rollback", True)
    alias = await registry_store.get_alias("acme", "support")
    assert (alias.stable, alias.canary, alias.canary_weight) == ("support-r1", None, 0.0)
    assert gw.watcher.state.alias("acme", "support") == alias_rec(
        alias
    )  # refreshed: routing stops at once
    entry = (await registry_store.audit("acme", 1))[0]
    assert (entry["action"], entry["actor"]) == ("auto_rollback", ACTOR)
    assert "error rate 1.000 vs stable 0.000" in entry["reason"]
    assert "canary n=10 errors=10" in entry["reason"]
    assert "stable n=30 errors=0" in entry["reason"]
    assert alias.history[-1].action == "rollback"
    assert gw.rollbacks() == 1.0
    assert await gw.guard.tick() == []  # nothing left to guard
    assert len(gw.windows) == 1  # the canary's window was pruned


async def test_stable_outcomes_from_before_the_canary_started_do_not_count(
    gateways: list[Gateway], registry_store: RegistryStore
) -> None:
    """A concurrent comparison: a stable arm that failed before the canary started (another
    period) must not excuse a failing canary, nor fill the stable arm's minimum sample."""
    gw = gateways[0]
    now = [1000.0]  # one monotonic clock for the windows and the guard; wall = wall0 + it
    wall0 = 1_700_000_000.0
    windows = Windows(CanaryConfig(), clock=lambda: now[0])
    fleet = FleetWindows(
        windows, None, "gw-clock", gw.metrics,
        clock=lambda: now[0], wall_clock=lambda: wall0 + now[0],
    )  # fmt: skip
    guard = CanaryGuard(
        fleet, registry_store, gw.watcher, gw.metrics, wall_clock=lambda: wall0 + now[0]
    )

    def traffic(arm: str, release: str, n: int, status: str) -> None:
        for _ in range(n):
            windows.observe(SeriesKey("acme", "support", release, arm), status, 0.05, False, False)

    traffic("stable", "support-r1", 30, "server_error")  # an incident, before the canary
    await registry_store.mutate_alias(
        "acme", "support", expected_revision=2, actor="root", action="canary",
        change=lambda a: rollout.start_canary(a, "support-r2", 0.5, now=wall0 + 1010.0),
    )  # fmt: skip
    await gw.watcher.refresh()
    now[0] = 1020.0
    traffic("canary", "support-r2", 10, "server_error")
    assert await guard.tick() == []  # no stable sample since the start: wait
    traffic("stable", "support-r1", 10, "ok")
    (action,) = await guard.tick()
    assert action.action == "auto_rollback"
    assert "stable n=10 errors=0" in action.decision.reason
    assert "error rate 1.000 vs stable 0.000" in action.decision.reason


async def test_racing_guards_exactly_one_wins(
    gateways: list[Gateway], registry_store: RegistryStore
) -> None:
    for gw in gateways:
        gw.traffic("stable", "support-r1", 20)
        gw.traffic("canary", "support-r2", 20, failed=20)
    results = await asyncio.gather(*(gw.guard.tick() for gw in gateways))
    won = [a.won for actions in results for a in actions]
    assert sorted(won) == [False, False, True]
    assert sum(gw.rollbacks() for gw in gateways) == 1.0
    audit = await registry_store.audit("acme", 10)
    assert [e["action"] for e in audit].count("auto_rollback") == 1
    alias = await registry_store.get_alias("acme", "support")
    assert (alias.canary, alias.revision) == (None, 3)


async def test_guard_leaves_alone_what_it_must_not_touch(
    gateways: list[Gateway], registry_store: RegistryStore
) -> None:
    gw = gateways[0]
    gw.traffic("stable", "support-r1", 20)
    gw.traffic("canary", "support-r2", 20, failed=20)
    await registry_store.mutate_alias(
        "acme", "support", expected_revision=2, actor="root", action="set_flags",
        change=lambda a: rollout.set_flags(a, {"auto_rollback": False}, now=0.0),
    )  # fmt: skip
    await gw.watcher.refresh()
    decision = await gw.guard.judge(gw.watcher.state, _alias(gw))
    assert decision is not None
    assert decision.action == "rollback"  # judged bad, but the flag is off
    assert await gw.guard.tick() == []
    await registry_store.mutate_alias(
        "acme", "support", expected_revision=3, actor="root", action="set_flags",
        change=lambda a: rollout.set_flags(a, {"auto_rollback": True, "kill_switch": True}, now=0),
    )  # fmt: skip
    await gw.watcher.refresh()
    assert await gw.guard.tick() == []  # kill switch: no canary traffic to judge
    assert (await registry_store.get_alias("acme", "support")).canary == "support-r2"
    assert gw.rollbacks() == 0.0


async def test_a_human_moving_first_makes_the_guard_lose_quietly(
    gateways: list[Gateway], registry_store: RegistryStore
) -> None:
    gw = gateways[0]
    gw.traffic("stable", "support-r1", 20)
    gw.traffic("canary", "support-r2", 20, failed=20)
    await gw.watcher.stop()  # the guard's snapshot stays at revision 2 (a late invalidation)
    await registry_store.mutate_alias(
        "acme", "support", expected_revision=2, actor="admin", action="canary",
        change=lambda a: rollout.set_weight(a, 0.2, now=0.0),
    )  # fmt: skip
    (action,) = await gw.guard.tick()
    assert (action.action, action.won) == ("auto_rollback", False)
    alias = await registry_store.get_alias("acme", "support")
    assert (alias.canary, alias.canary_weight, alias.revision) == ("support-r2", 0.2, 3)
    assert gw.rollbacks() == 0.0
    assert await gw.guard.tick() == []  # the lost revision is not retried
    await gw.watcher.refresh()  # revision 3 arrives: still bad, so it is rolled back now
    (action,) = await gw.guard.tick()
    assert (action.action, action.won) == ("auto_rollback", True)


async def test_an_unreachable_registry_is_retried_on_the_next_pass(
    redis_private: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_private.url, socket_timeout=1, socket_connect_timeout=1)
    store = RegistryStore(client, b"guard-test", timeout=0.5)
    await _seed(store)
    gw = Gateway(store, client, CanaryConfig(), fleet_timeout=0.5)
    await gw.watcher.start()
    try:
        gw.traffic("stable", "support-r1", 20)
        gw.traffic("canary", "support-r2", 20, failed=20)
        redis_private.freeze()
        try:
            with pytest.raises(RegistryUnavailable):
                await gw.guard.tick()  # judged on local windows, then the write fails
            assert gw.gauge("loragate_canary_local_fallback") == 1.0
        finally:
            redis_private.thaw()
        (action,) = await gw.guard.tick()  # the same revision is tried again, and wins
        assert (action.action, action.won) == ("auto_rollback", True)
        assert gw.gauge("loragate_canary_local_fallback") == 0.0
        assert "fleet totals over 1 gateway" in action.decision.reason
        assert (await store.get_alias("acme", "support")).canary is None
    finally:
        await gw.watcher.stop()
        await client.aclose()


async def test_auto_promotion_after_a_clean_window_is_opt_in(
    registry_store: RegistryStore, redis_client: aioredis.Redis
) -> None:
    await _seed(registry_store)
    gw = Gateway(registry_store, redis_client, CanaryConfig(auto_promote=True,
                                                            promote_min_requests=50))  # fmt: skip
    gate_calls: list[str] = []

    async def gate(alias: AnyAlias) -> bool:
        gate_calls.append(str(alias.canary))
        return len(gate_calls) > 1  # the first evaluation fails, a later revision passes

    gw.guard = CanaryGuard(gw.fleet, registry_store, gw.watcher, gw.metrics, promotion_gate=gate)
    await gw.watcher.start()
    try:
        gw.traffic("stable", "support-r1", 50)
        gw.traffic("canary", "support-r2", 49)
        assert await gw.guard.tick() == []  # 49 clean canary requests: hold
        gw.traffic("canary", "support-r2", 1)
        assert await gw.guard.tick() == []  # the gate refused
        assert await gw.guard.tick() == []  # and is not asked again for the same revision
        assert gate_calls == ["support-r2"]
        await registry_store.mutate_alias(
            "acme", "support", expected_revision=2, actor="admin", action="canary",
            change=lambda a: rollout.set_weight(a, 0.6, now=0.0),
        )  # fmt: skip
        await gw.watcher.refresh()
        (action,) = await gw.guard.tick()
        assert (action.action, action.won) == ("auto_promote", True)
        alias = await registry_store.get_alias("acme", "support")
        assert (alias.stable, alias.canary) == ("support-r2", None)
        assert (await registry_store.audit("acme", 1))[0]["actor"] == ACTOR
    finally:
        await gw.watcher.stop()


def _alias(gw: Gateway) -> AliasRec:
    alias = gw.watcher.state.alias("acme", "support")
    assert alias is not None
    return alias
