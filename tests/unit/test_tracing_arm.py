"""The tracing arm's pairing (loadtests/tracing_arm.py): off and on runs of the same repetition,
mode and level are compared; the difference is the median over repetitions with its range. And
the engine's request logging flags (EngineProcess.log_requests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.engine_process import EngineProcess
from loadtests import tracing_arm


def _rec(arm: str, rep: str, p50: float, rps: float, mode: str = "open") -> dict[str, Any]:
    return {"arm": arm, "mode": mode, "level": 100, "rep": rep, "latency_p50_ms": p50,
            "latency_p95_ms": p50 * 2, "throughput_rps": rps}  # fmt: skip


def test_runs_are_paired_by_repetition_and_the_difference_has_its_range() -> None:
    records = [
        _rec("loragate", "r0", 1.0, 100), _rec("loragate-otel", "r0", 1.5, 90),
        _rec("loragate", "r1", 3.0, 100), _rec("loragate-otel", "r1", 3.1, 80),
        _rec("loragate", "r2", 2.0, 100), _rec("loragate-otel", "r2", 4.0, 70),
        _rec("direct", "r0", 0.1, 100), _rec("litellm", "r0", 9.0, 10),
        _rec("loragate", "end", 1.0, 100),  # no traced run in this repetition: not paired
    ]  # fmt: skip
    (row,) = tracing_arm.summary(records)
    assert (row["mode"], row["level"], row["runs"]) == ("open", 100.0, 3)
    assert row["off_latency_p50_ms"] == 2.0
    assert row["on_latency_p50_ms"] == 3.1
    assert row["diff_latency_p50_ms"] == 0.5  # median of 0.5, 0.1, 2.0: not 3.1 - 2.0
    low, high = row["diff_latency_p50_ms_range"]
    assert (low, high) == (pytest.approx(0.1), 2.0)
    assert row["diff_throughput_rps"] == -20
    assert "diff_gateway_cpu_us_per_req" not in row  # absent from the records: not invented


def test_the_report_section_states_both_sides_and_the_spans_received() -> None:
    records = [_rec("loragate", "r0", 1.0, 100), _rec("loragate-otel", "r0", 1.5, 90)]
    doc = {
        "rows": [
            {"arm": "loragate", "mode": "open", "level": 100.0, "added_latency_p50_ms": 0.9},
            {"arm": "loragate-otel", "mode": "open", "level": 100.0, "added_latency_p50_ms": 1.4},
        ],
        "tracing_rows": tracing_arm.summary(records),
        "tracing": {"spans": 80, "exports": 2, "bytes": 2**20, "requests": 10,
                    "spans_per_request": 8.0, "sink_cpu_s": 0.1},
    }  # fmt: skip
    text = "\n".join(tracing_arm.markdown(doc))
    assert "| open | 100/s | 0.90 | 1.40 | +0.50 |" in text
    assert "80 spans in 2 exports" in text
    assert tracing_arm.markdown({"rows": [], "tracing_rows": []}) == []


def test_request_logging_adds_the_flags_that_keep_prompts_out() -> None:
    engine = EngineProcess(model_dir=Path("/m"), served_name="m", log_dir=Path("/tmp"))
    assert "--enable-log-requests" not in engine.command()
    engine.log_requests = True
    command = engine.command()
    at = command.index("--enable-log-requests")
    assert command[at + 1 : at + 3] == ["--max-log-len", "0"]
