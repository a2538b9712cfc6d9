"""The mergeable outcome counts each gateway publishes: sums, P95 within one bucket, wire format."""

from __future__ import annotations

import random

import pytest

from gateway.observability.tally import BUCKETS, Tally, bucket_of, upper_edge
from gateway.observability.windows import p95


def _tally(latencies: list[float], failed_every: int = 0) -> Tally:
    t = Tally()
    for i, x in enumerate(latencies):
        failed = bool(failed_every) and i % failed_every == 0
        t.add(failed=failed, latency_s=x, refusal=i % 7 == 0, schema_violation=i % 11 == 0)
    return t


def test_buckets_cover_the_value_with_at_most_five_percent_above() -> None:
    for x in (0.0005, 0.001, 0.0011, 0.05, 0.3, 1.0, 7.5, 120.0):
        edge = upper_edge(bucket_of(x))
        assert x <= edge * (1 + 1e-9)
        assert edge <= max(x, 0.001) * 1.05 + 1e-12
    assert bucket_of(1e9) == BUCKETS - 1


def test_merged_tallies_equal_one_tally_over_all_outcomes() -> None:
    rng = random.Random(7)
    parts = [[rng.lognormvariate(-2, 0.8) for _ in range(n)] for n in (120, 45, 300)]
    merged = Tally.merged(_tally(p, failed_every=9) for p in parts)
    whole = _tally([x for p in parts for x in p], failed_every=0)
    assert merged.requests == whole.requests == 465
    # each part counts its own i % 9 == 0 as failed: the sum of the parts' failures
    assert merged.errors == sum(len(range(0, len(p), 9)) for p in parts)
    assert merged.stats().refusal_rate > 0


def test_p95_from_buckets_is_within_five_percent_of_the_exact_one() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(-1.5, 1.0) for _ in range(2000)]
    exact = p95(values)
    assert exact is not None
    got = _tally(values).p95()
    assert got is not None
    assert exact <= got <= exact * 1.05 + 1e-12
    assert Tally().p95() is None


def test_wire_round_trip_and_malformed_payloads() -> None:
    t = _tally([0.01, 0.02, 0.5], failed_every=2)
    back = Tally.from_wire(t.to_wire())
    assert back == t
    for bad in (None, [1, 2], ["x", 0, 0, 0, []], [1, 0, 0, 0, [[1]]]):
        with pytest.raises(ValueError, match="malformed"):
            Tally.from_wire(bad)
