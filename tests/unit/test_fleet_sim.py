"""Many gateways act as one pool: the fleet simulation (loadtests/fleet_sim.py) over the product's
own EnginePool, one per gateway with its own process-local state, learning only what the
simulated engines report. 100 tenants Zipf(1.1), 4 replicas x 32 CPU adapter slots, 40,000
requests spread round-robin over the gateways."""

from __future__ import annotations

import pytest

from loadtests.fleet_sim import main, simulate

# About 1.5 s per gateway count on an idle core; the bound is for a CI box shared with engines.
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def one() -> float:
    result = simulate(1)
    print(f"gateways=1 load_miss={result.load_miss:.2%} round_robin={result.round_robin:.2%}")
    return result.load_miss


@pytest.mark.parametrize(("gateways", "factor"), [(3, 1.5), (6, 2.0)])
def test_load_misses_stay_low_as_gateways_are_added(
    one: float, gateways: int, factor: float
) -> None:
    result = simulate(gateways)
    print(
        f"gateways={gateways} load_miss={result.load_miss:.2%} "
        f"round_robin={result.round_robin:.2%} (1 gateway: {one:.2%})"
    )
    assert result.load_miss < 0.01
    assert result.load_miss <= factor * one
    assert result.round_robin > 10 * result.load_miss  # affinity is doing the work
    assert result.overloaded == 0


def test_the_command_prints_its_summary_as_the_last_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["--gateways", "2", "--requests", "2000"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    gateways, miss, rr = last.split()
    assert gateways == "gateways=2"
    assert miss.startswith("load_miss=")
    assert miss.endswith("%")
    assert rr.startswith("round_robin=")
    assert rr.endswith("%")
    float(miss.removeprefix("load_miss=").rstrip("%"))
