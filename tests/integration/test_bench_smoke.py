"""The benchmark harness works end to end (`python -m loadtests.bench --smoke`): mock engine, redis,
a seeded gateway with a canary in progress, the load generators, the report. It asserts that the
report is produced and sane, never timings (those belong in the report, not in CI)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_report_files_exist(smoke_report: Path) -> None:
    assert (smoke_report / "report.json").is_file()
    markdown = (smoke_report / "report.md").read_text()
    assert "## Targets" in markdown
    assert "| loragate |" in markdown


def test_every_arm_and_mode_served_requests_without_errors(smoke_report: Path) -> None:
    doc = json.loads((smoke_report / "report.json").read_text())
    seen = {(r["arm"], r["mode"]) for r in doc["rows"]}
    for arm in ("direct", "loragate", "loragate-otel"):
        for mode in ("open", "closed", "sse"):
            assert (arm, mode) in seen
    for row in doc["rows"]:
        assert row["requests"] > 0
        assert row["errors"] == 0, row
        assert row["latency_p50_ms"] > 0
        assert row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p99_ms"]
        if row["mode"] == "sse":
            assert row["lost_frames"] == 0
            assert row["frames"] > 0


def test_gateway_rows_carry_cpu_rss_and_redis_counts(smoke_report: Path) -> None:
    doc = json.loads((smoke_report / "report.json").read_text())
    for row in (r for r in doc["rows"] if r["arm"] in ("loragate", "loragate-otel")):
        assert row["gateway_cpu_us_per_req"] >= 0
        assert row["gateway_rss_mb"] > 10
        assert "redis_commands_per_req" in row
        assert not math.isnan(row["added_latency_p50_ms"])
    assert doc["environment"]["kernel"]
    assert {t["met"] for t in doc["targets"]} == {None}  # smoke never judges targets


def test_plot_written_when_matplotlib_is_installed(smoke_report: Path) -> None:
    pytest.importorskip("matplotlib")
    doc = json.loads((smoke_report / "report.json").read_text())
    assert doc["plots"]
    for name in doc["plots"]:
        assert (smoke_report / name).read_bytes()[:4] == b"\x89PNG"


def test_fairness_section_is_reported(smoke_report: Path) -> None:
    """Served counts, not timings: every tenant of both scenarios was served."""
    fair = json.loads((smoke_report / "report.json").read_text())["fairness"]
    weighted = fair["weights_3_1"]
    assert weighted["heavy_rps"] > weighted["light_rps"] > 0
    ten = fair["ten_tenants_one_flooding"]
    assert len(ten["rps"]) == 10
    assert all(r > 0 for r in ten["rps"])
    assert 0.1 <= ten["jain_index"] <= 1.0
    assert "## Fair queuing between tenants" in (smoke_report / "report.md").read_text()


def test_tracing_arm_exported_spans_and_is_reported_next_to_tracing_off(smoke_report: Path) -> None:
    """The traced gateway's spans reached the OTLP receiver (a root and a span per phase per
    request, nothing dropped at smoke rates), and the report pairs off and on per mode."""
    doc = json.loads((smoke_report / "report.json").read_text())
    totals = doc["tracing"]
    assert totals["requests"] > 0
    assert totals["exports"] > 0
    assert totals["spans_per_request"] >= 8
    modes = {(r["mode"], r["runs"]) for r in doc["tracing_rows"]}
    assert modes == {("open", 1), ("closed", 1), ("sse", 1), ("steady", 1)}
    for row in doc["tracing_rows"]:
        assert row["off_throughput_rps"] > 0
        assert row["on_throughput_rps"] > 0
        assert "diff_latency_p95_ms" in row
    assert "## Tracing cost (OTLP export off vs on" in (smoke_report / "report.md").read_text()
