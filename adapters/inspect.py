"""What a trainer's output directory would register as, or every reason it would be refused.

Used by `loragate adapters inspect ./dir` and by the push client before it sends anything. Trainer
leftovers (tokenizer files, README, training_args.bin) are skipped, never opened.

Example:
    report = inspect_source(Path("out/checkpoint-final"), base_model="smollm2-135m-instruct",
                            base_model_aliases=["HuggingFaceTB/SmolLM2-135M-Instruct"],
                            max_rank=16, supported_modules=["q_proj", "v_proj"], max_bytes=2**29)
    report.ok, report.reasons, report.skipped
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.artifact import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ArtifactInfo,
    check_tensors,
    compatibility,
    compute_digest,
    list_artifact,
    parse_config,
    read_config,
    read_tensors,
)
from adapters.errors import ArtifactError


@dataclass
class InspectReport:
    directory: Path
    kept: dict[str, int] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    reasons: list[tuple[str, str]] = field(default_factory=list)  # (code, message)
    info: ArtifactInfo | None = None

    @property
    def ok(self) -> bool:
        return not self.reasons and self.info is not None

    def view(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"ok": self.ok, "skipped": list(self.skipped)}
        if self.info is not None:
            doc.update(
                base_model=self.info.base_model,
                rank=self.info.rank,
                target_modules=list(self.info.target_modules),
                size_bytes=self.info.size_bytes,
                digest=self.info.digest,
                files=sorted(self.kept),
            )
        if self.reasons:
            doc["refused"] = [{"code": c, "message": m} for c, m in self.reasons]
        return doc


def inspect_source(
    directory: Path,
    *,
    base_model: str,
    max_rank: int,
    supported_modules: Sequence[str],
    max_bytes: int,
    base_model_aliases: Sequence[str] = (),
) -> InspectReport:
    report = InspectReport(directory)
    if directory.is_symlink() or not directory.is_dir():
        report.reasons.append(("artifact_invalid", f"{directory} is not a directory"))
        return report
    listing = list_artifact(directory, skip_trainer_files=True)
    report.kept, report.skipped = listing.kept, listing.skipped
    for name, code, why in listing.refused:
        report.reasons.append((code, f"{name}: {why}"))
    total = sum(listing.kept.values())
    if total > max_bytes:
        report.reasons.append(
            ("artifact_invalid", f"artifact is {total} bytes, over the {max_bytes}-byte cap")
        )
    if CONFIG_FILE not in listing.kept or WEIGHTS_FILE not in listing.kept:
        return report
    try:
        config = parse_config(read_config(directory / CONFIG_FILE))
    except ArtifactError as exc:
        report.reasons.append((exc.code, exc.message))
        return report
    try:
        modules = check_tensors(config, read_tensors(directory / WEIGHTS_FILE))
    except ArtifactError as exc:
        report.reasons.append((exc.code, exc.message))
        return report
    for problem in compatibility(
        config, modules, base_model, max_rank, supported_modules, base_model_aliases
    ):
        report.reasons.append(("adapter_incompatible", problem))
    if report.reasons:
        return report
    report.info = ArtifactInfo(
        path=directory,
        relpath=directory.name,
        digest=compute_digest(directory),
        base_model=config.base_model,
        rank=config.rank,
        alpha=config.alpha,
        target_modules=modules,
        size_bytes=total,
    )
    return report
