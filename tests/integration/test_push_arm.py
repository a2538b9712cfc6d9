"""The push benchmark's harness works (`python -m loadtests.push_arm`, part of `make bench`): a
gateway process with a real S3 protocol server takes a generated adapter and reports the split.
It asserts the report's shape, never timings (those are the benchmark's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.artifact import validate_artifact
from loadtests import push_arm


def test_generated_adapter_is_valid_and_about_the_size_asked(tmp_path: Path) -> None:
    out = push_arm.write_large_lora(tmp_path / "lora", mb=3, base_model="bench-base")
    info = validate_artifact(
        tmp_path, "lora", base_model="bench-base", max_rank=16,
        supported_modules=("q_proj", "v_proj"), max_bytes=10**8,
    )  # fmt: skip
    assert info.rank == 16
    assert 2.5e6 < sum(p.stat().st_size for p in out.iterdir()) < 3.5e6


@pytest.mark.timeout(180)
def test_push_arm_reports_the_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = push_arm.run(tmp_path, mb=2, pushes=1)
    (row,) = result["rows"]
    assert set(row) >= {"receive", "validate", "objectstore", "registry", "total_s", "mb_per_s"}
    assert row["bytes"] > 1.5e6
    assert "object store copy" in capsys.readouterr().out
