"""The canary verdict over synthetic outcomes: statistics, every threshold, the minimum sample,
window expiry and bounds (pure: no I/O)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.observability.series import SeriesKey
from gateway.observability.windows import ArmStats, Outcome, Windows, p95, summarize
from gateway.rollout.analysis import decide
from gateway.settings import CanaryConfig
from registry.models import Thresholds

T = Thresholds(
    min_requests=20,
    max_error_rate_delta=0.05,
    max_p95_ratio=2.0,
    max_refusal_rate_delta=0.10,
    max_schema_violation_rate_delta=0.05,
)


def outcomes(
    n: int,
    *,
    failed: int = 0,
    refusals: int = 0,
    violations: int = 0,
    latency: float = 0.1,
    slow: int = 0,
    slow_latency: float = 1.0,
) -> list[Outcome]:
    """n outcomes; the first `failed` failed, the first `refusals` refused, and so on."""
    return [
        Outcome(
            at=float(i),
            failed=i < failed,
            latency_s=slow_latency if i < slow else latency,
            refusal=i < refusals,
            schema_violation=i < violations,
        )
        for i in range(n)
    ]


def test_p95_is_nearest_rank() -> None:
    assert p95([]) is None
    assert p95([3.0]) == 3.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0
    assert p95([float(i) for i in range(1, 21)]) == 19.0  # ceil(0.95 * 20) = 19th value
    assert p95([5.0, 1.0, 4.0, 2.0, 3.0]) == 5.0


def test_summarize_counts_and_p95_over_successes_only() -> None:
    stats = summarize(outcomes(40, failed=4, refusals=6, violations=8, slow=4, slow_latency=9.0))
    assert (stats.requests, stats.errors, stats.refusals, stats.schema_violations) == (40, 4, 6, 8)
    assert stats.error_rate == pytest.approx(0.1)
    assert stats.refusal_rate == pytest.approx(0.15)
    assert stats.schema_violation_rate == pytest.approx(0.2)
    assert stats.p95_s == pytest.approx(0.1)  # the slow ones failed: not in the latency sample
    assert summarize([]) == ArmStats()
    assert ArmStats().error_rate == 0.0


def test_waits_until_both_arms_have_the_minimum_sample() -> None:
    bad = summarize(outcomes(19, failed=19))
    good = summarize(outcomes(100))
    assert decide(good, bad, T).action == "wait"
    assert decide(bad, good, T).action == "wait"
    decision = decide(good, summarize(outcomes(20, failed=20)), T)
    assert decision.action == "rollback"


@pytest.mark.parametrize(
    ("canary", "needle"),
    [
        (outcomes(40, failed=3), "error rate 0.075 vs stable 0.000 (delta 0.075 > 0.05)"),
        (outcomes(40, slow=4, slow_latency=0.5), "p95 500ms vs stable 100ms (ratio 5.00 > 2)"),
        (outcomes(40, refusals=5), "refusal rate 0.125 vs stable 0.000 (delta 0.125 > 0.1)"),
        (outcomes(40, violations=40), "schema violation rate 1.000 vs stable 0.000"),
    ],
    ids=["errors", "p95", "refusals", "schema"],
)
def test_each_threshold_triggers_a_rollback_with_its_numbers(
    canary: list[Outcome], needle: str
) -> None:
    decision = decide(summarize(outcomes(40)), summarize(canary), T)
    assert decision.action == "rollback"
    assert len(decision.exceeded) == 1
    assert needle in decision.reason
    assert "canary n=40" in decision.reason
    assert "stable n=40" in decision.reason


@pytest.mark.parametrize(
    "canary",
    [
        outcomes(40, failed=2),  # delta 0.05: not above the limit
        outcomes(40, slow=2, slow_latency=0.5),  # p95 still 0.1: the two slow are the top 5%
        outcomes(40, refusals=4),  # delta 0.10
        outcomes(40, violations=2),  # delta 0.05
    ],
    ids=["errors", "p95", "refusals", "schema"],
)
def test_at_the_threshold_it_holds(canary: list[Outcome]) -> None:
    decision = decide(summarize(outcomes(40)), summarize(canary), T)
    assert decision.action == "hold", decision.reason
    assert "all within thresholds" in decision.reason


def test_deltas_are_relative_to_stable() -> None:
    """A canary as bad as stable is not blamed: the problem is elsewhere (engine, traffic)."""
    stable = summarize(outcomes(50, failed=10, refusals=10, violations=10, slow=2))
    canary = summarize(outcomes(50, failed=10, refusals=10, violations=10, slow=2))
    assert decide(stable, canary, T).action == "hold"
    better = summarize(outcomes(50))
    assert decide(stable, better, T).action == "hold"


def test_p95_ratio_needs_latency_on_both_arms() -> None:
    all_failed = summarize(outcomes(30, failed=30))
    assert all_failed.p95_s is None
    decision = decide(all_failed, summarize(outcomes(30, latency=50.0)), T)
    assert decision.action == "hold"  # no stable latency to compare with, and no excess errors


def test_several_thresholds_are_all_reported() -> None:
    canary = summarize(outcomes(40, failed=10, violations=40, slow=15, slow_latency=0.9))
    decision = decide(summarize(outcomes(40)), canary, T)
    assert decision.action == "rollback"
    assert [e.split(" ")[0] for e in decision.exceeded] == ["error", "p95", "schema"]


def test_thresholds_come_from_the_release() -> None:
    canary = summarize(outcomes(40, failed=3))
    lenient = Thresholds(min_requests=20, max_error_rate_delta=0.5)
    assert decide(summarize(outcomes(40)), canary, lenient).action == "hold"
    strict_sample = Thresholds(min_requests=100)
    assert decide(summarize(outcomes(40)), canary, strict_sample).action == "wait"


def test_promotion_only_when_asked_and_clean() -> None:
    stable, canary = summarize(outcomes(40)), summarize(outcomes(40))
    assert decide(stable, canary, T).action == "hold"
    assert decide(stable, canary, T, promote_min_requests=41).action == "hold"
    assert decide(stable, canary, T, promote_min_requests=40).action == "promote"
    dirty = summarize(outcomes(40, failed=10))
    assert decide(stable, dirty, T, promote_min_requests=10).action == "rollback"


@given(
    n_stable=st.integers(20, 300),
    n_canary=st.integers(20, 300),
    p_stable=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**32 - 1),
)
def test_statistics_match_a_recount(
    n_stable: int, n_canary: int, p_stable: float, seed: int
) -> None:
    """Over random samples, the verdict is exactly the threshold rule applied to recounted rates."""
    rng = random.Random(seed)

    def sample(n: int, p: float) -> list[Outcome]:
        return [
            Outcome(float(i), rng.random() < p, rng.uniform(0.05, 0.2), False, rng.random() < p)
            for i in range(n)
        ]

    s, c = sample(n_stable, p_stable), sample(n_canary, p_stable + 0.08)
    stats_s, stats_c = summarize(s), summarize(c)
    errors = sum(o.failed for o in c) / n_canary - sum(o.failed for o in s) / n_stable
    schema = (
        sum(o.schema_violation for o in c) / n_canary
        - sum(o.schema_violation for o in s) / n_stable
    )
    ratio_ok = (stats_c.p95_s or 0) <= 2.0 * (stats_s.p95_s or 1)
    expected = "hold" if errors <= 0.05 and schema <= 0.05 and ratio_ok else "rollback"
    assert decide(stats_s, stats_c, T).action == expected


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_windows_count_only_release_outcomes_and_expire() -> None:
    clock = Clock()
    windows = Windows(CanaryConfig(window_s=10.0, max_samples=50), clock=clock)
    key = SeriesKey("acme", "support", "support-r2", "canary")
    windows.observe(SeriesKey("acme", "support", "support-r2", "canary"), "ok", 0.1, False, True)
    windows.observe(
        SeriesKey("acme", "support", "support-r2", "canary"), "server_error", 0.2, False, False
    )
    windows.observe(
        SeriesKey("acme", "support", "support-r2", "canary"), "client_error", 0.0, False, False
    )
    windows.observe(
        SeriesKey("acme", "support", "support-r2", "canary"), "cancelled", 0.0, False, False
    )
    windows.observe(
        SeriesKey("acme", "support", "unknown", "stable"), "server_error", 0.0, False, False
    )
    stats = windows.stats(key)
    assert (stats.requests, stats.errors, stats.schema_violations) == (2, 1, 1)
    assert len(windows) == 1
    clock.now += 5.0
    windows.observe(SeriesKey("acme", "support", "support-r2", "canary"), "ok", 0.3, True, False)
    assert windows.stats(key).requests == 3
    clock.now += 6.0  # the first two are now 11 s old
    stats = windows.stats(key)
    assert (stats.requests, stats.refusals) == (1, 1)
    clock.now += 20.0
    assert windows.stats(key) == ArmStats()


def test_windows_are_bounded_and_pruned() -> None:
    windows = Windows(CanaryConfig(max_samples=10), clock=Clock())
    for _ in range(100):
        windows.observe(
            SeriesKey("acme", "support", "support-r1", "stable"), "ok", 0.1, False, False
        )
        windows.observe(
            SeriesKey("acme", "support", "support-r2", "canary"), "ok", 0.1, False, False
        )
    assert windows.stats(SeriesKey("acme", "support", "support-r1", "stable")).requests == 10
    windows.prune(lambda key: key.arm == "stable")
    assert len(windows) == 1
    assert windows.stats(SeriesKey("acme", "support", "support-r2", "canary")) == ArmStats()


def test_stats_since_counts_only_the_later_outcomes() -> None:
    clock = Clock()
    windows = Windows(CanaryConfig(window_s=60.0), clock=clock)
    key = SeriesKey("acme", "support", "support-r1", "stable")
    for _ in range(5):
        windows.observe(
            SeriesKey("acme", "support", "support-r1", "stable"), "server_error", 0.1, False, False
        )
    started = clock.now + 1.0
    clock.now += 2.0
    for _ in range(3):
        windows.observe(
            SeriesKey("acme", "support", "support-r1", "stable"), "ok", 0.1, False, False
        )
    assert (windows.stats(key).requests, windows.stats(key).errors) == (8, 5)
    since = windows.stats(key, since=started)
    assert (since.requests, since.errors) == (3, 0)
    assert windows.stats(key, since=started - 3600).requests == 8  # before the window: all of it
