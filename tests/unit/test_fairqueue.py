"""The fair queue between tenants (gateway/engines/fairqueue.py): order, shares, bounds, bands.

A "slot simulation" here pops the queue once per freed slot while every tenant keeps its queue
topped up (saturating), and counts what each tenant was served.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from gateway.engines.fairqueue import FairQueue, Flow, TenantQueueFull


def _ids() -> itertools.count[int]:
    return itertools.count()


def _drain(q: FairQueue[str]) -> list[str]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item)
    return out


def _saturate(flows: list[Flow], pops: int, *, per_flow: int = 8) -> Counter[str]:
    """Every flow keeps `per_flow` requests queued; returns served counts per tenant."""
    q: FairQueue[tuple[str, int]] = FairQueue(capacity=10_000, per_tenant=per_flow)
    seq = _ids()
    for flow in flows:
        for _ in range(per_flow):
            q.push(flow, (flow.tenant, next(seq)))
    by_tenant = {f.tenant: f for f in flows}
    served: Counter[str] = Counter()
    for _ in range(pops):
        item = q.pop()
        assert item is not None
        served[item[0]] += 1
        q.push(by_tenant[item[0]], (item[0], next(seq)))
    return served


def test_fifo_within_one_tenant() -> None:
    q: FairQueue[str] = FairQueue(capacity=10, per_tenant=10)
    for i in range(5):
        q.push(Flow("a"), f"a{i}")
    assert len(q) == 5
    assert q.depth("a") == 5
    assert _drain(q) == [f"a{i}" for i in range(5)]
    assert len(q) == 0
    assert q.depths() == {}


def test_equal_weights_alternate_whatever_each_sends() -> None:
    q: FairQueue[str] = FairQueue(capacity=100, per_tenant=50)
    for i in range(20):
        q.push(Flow("flood"), f"f{i}")
    q.push(Flow("quiet"), "q0")
    q.push(Flow("quiet"), "q1")
    order = _drain(q)
    assert order[:4] in (["f0", "q0", "f1", "q1"], ["q0", "f0", "q1", "f1"])
    assert order[4:] == [f"f{i}" for i in range(2, 20)]


def test_a_quiet_tenant_behind_a_flood_is_next_within_one_round() -> None:
    q: FairQueue[str] = FairQueue(capacity=300, per_tenant=200)
    for i in range(200):
        q.push(Flow("flood", weight=3.0), f"f{i}")
    for _ in range(7):
        q.pop()  # the flood is being served when the quiet request arrives
    q.push(Flow("quiet"), "q")
    waited = 0
    while q.pop() != "q":
        waited += 1
    assert waited <= 3  # at most one round of the flood's weight


@pytest.mark.parametrize(("wa", "wb"), [(3.0, 1.0), (1.0, 1.0), (2.5, 0.5), (0.3, 0.1)])
def test_saturating_tenants_split_by_weight(wa: float, wb: float) -> None:
    served = _saturate([Flow("a", wa), Flow("b", wb)], pops=4000)
    ratio = served["a"] / served["b"]
    assert ratio == pytest.approx(wa / wb, rel=0.02)


def test_ten_tenants_one_flooding_jain_index_is_one() -> None:
    """Every tenant saturates; one also floods (a much deeper queue): shares stay equal."""
    q: FairQueue[tuple[str, int]] = FairQueue(capacity=10_000, per_tenant=1000)
    seq = _ids()
    tenants = [f"t{i}" for i in range(10)]
    for t in tenants:
        for _ in range(1000 if t == "t0" else 4):
            q.push(Flow(t), (t, next(seq)))
    served: Counter[str] = Counter()
    for _ in range(3000):
        item = q.pop()
        assert item is not None
        served[item[0]] += 1
        q.push(Flow(item[0]), (item[0], next(seq)))
    xs = [served[t] for t in tenants]
    jain = sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))
    assert jain > 0.999


def test_work_conserving_a_tenant_alone_gets_every_turn() -> None:
    served = _saturate([Flow("solo", weight=0.1)], pops=100)
    assert served == Counter({"solo": 100})


def test_bands_are_strict_priority() -> None:
    q: FairQueue[str] = FairQueue(capacity=100, per_tenant=100)
    for i in range(5):
        q.push(Flow("a", band=2), f"batch{i}")
        q.push(Flow("b", band=1), f"std{i}")
    q.push(Flow("c", band=0), "interactive")
    order = _drain(q)
    assert order[0] == "interactive"
    assert order[1:6] == [f"std{i}" for i in range(5)]
    assert order[6:] == [f"batch{i}" for i in range(5)]


def test_a_tenant_over_its_bound_is_refused_and_others_are_not() -> None:
    q: FairQueue[str] = FairQueue(capacity=100, per_tenant=3)
    for i in range(3):
        q.push(Flow("flood"), f"f{i}")
    assert q.would_refuse(Flow("flood"))
    with pytest.raises(TenantQueueFull) as refused:
        q.push(Flow("flood", band=0), "f3")  # another band: the bound is per tenant
    assert refused.value.tenant == "flood"
    assert refused.value.queued == 3
    assert not q.would_refuse(Flow("quiet"))
    assert q.push(Flow("quiet"), "q0") is None
    assert len(q) == 4


def test_a_full_queue_pushes_out_the_tenant_furthest_over_its_share() -> None:
    q: FairQueue[str] = FairQueue(capacity=6, per_tenant=6)
    for i in range(4):
        q.push(Flow("flood"), f"f{i}")
    q.push(Flow("heavy", weight=4.0), "h0")
    q.push(Flow("heavy", weight=4.0), "h1")
    # Full: flood has 4 per unit weight, heavy 0.5: the newest flood request makes room.
    assert q.push(Flow("quiet"), "q0") == "f3"
    assert "f3" not in q
    assert q.depth("flood") == 3
    assert q.push(Flow("quiet"), "q1") == "f2"
    # quiet (2) now equals flood (2): one more quiet request would be its own excess.
    assert q.would_refuse(Flow("quiet"))
    with pytest.raises(TenantQueueFull):
        q.push(Flow("quiet"), "q2")
    # The flood itself is never pushed in by pushing out others.
    with pytest.raises(TenantQueueFull):
        q.push(Flow("flood"), "f9")
    assert len(q) == 6


def test_pushout_takes_the_victims_least_urgent_newest_request() -> None:
    q: FairQueue[str] = FairQueue(capacity=3, per_tenant=3)
    q.push(Flow("a", band=2), "a-batch")
    q.push(Flow("a", band=0), "a-urgent")
    q.push(Flow("a", band=0), "a-urgent2")
    assert q.push(Flow("b"), "b0") == "a-batch"


def test_would_refuse_agrees_with_push() -> None:
    rng = random.Random(16)
    q: FairQueue[int] = FairQueue(capacity=20, per_tenant=8)
    seq = _ids()
    for _ in range(3000):
        if rng.random() < 0.55:
            flow = Flow(f"t{rng.randrange(5)}", weight=rng.choice([0.5, 1.0, 3.0]))
            predicted = q.would_refuse(flow)
            try:
                q.push(flow, next(seq))
            except TenantQueueFull:
                assert predicted
            else:
                assert not predicted
        else:
            q.pop()
        assert len(q) <= 20
        assert all(0 < n <= 8 for n in q.depths().values())
        assert sum(q.depths().values()) == len(q)


def test_remove_and_push_front() -> None:
    q: FairQueue[str] = FairQueue(capacity=10, per_tenant=10)
    q.push(Flow("a"), "a0")
    q.push(Flow("a"), "a1")
    q.push(Flow("b"), "b0")
    assert q.remove("a0")
    assert not q.remove("a0")
    first = q.pop()
    assert first in ("a1", "b0")
    q.push_front(Flow(first[0]), first)  # handed a slot it could not use: keeps its turn
    assert q.pop() == first
    assert sorted(_drain(q)) == sorted({"a1", "b0"} - {first})
    q.push(Flow("a"), "x")
    with pytest.raises(ValueError, match="already queued"):
        q.push(Flow("a"), "x")


def test_state_is_released_when_tenants_leave() -> None:
    """Nothing stays behind per tenant: 10,000 tenants passing through leave an empty queue."""
    q: FairQueue[int] = FairQueue(capacity=64, per_tenant=4)
    for i in range(10_000):
        q.push(Flow(f"t{i}", band=i % 3), i)
        if i % 2:
            q.remove(i - 1)
            assert q.pop() == i
    assert len(q) == 0
    assert q.depths() == {}
    assert q.pop() is None
    assert q._where == {}
    assert q._weights == {}
    assert all(not flows for flows in q._flows)
    assert all(not a for a in q._active)


def test_flow_and_queue_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="weight"):
        Flow("a", weight=0.0)
    with pytest.raises(ValueError, match="band"):
        Flow("a", band=3)
    with pytest.raises(ValueError, match="at least 1"):
        FairQueue(capacity=0, per_tenant=1)
