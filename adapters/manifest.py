"""`loragate_manifest.json`: how an adapter was made, stored next to its weights.

The registry keeps the digest; the manifest keeps the provenance an operator needs when a canary
misbehaves (which data, which hyper-parameters, what loss). It is one of the harmless files the
artifact validator allows, and it is never needed to serve the adapter.

Example:
    manifest = TrainManifest(base_model="smollm2-135m-instruct", rank=8, ...)
    write_manifest(adapter_dir, manifest)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapters.files import file_sha256

MANIFEST_FILE = "loragate_manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TrainManifest:
    base_model: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    dataset_sha256: str
    dataset_examples: int
    steps: int
    lr: float
    seed: int
    batch_size: int
    final_loss: float
    duration_s: float
    files: dict[str, str] = field(default_factory=dict)  # filename -> sha256 hex
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["target_modules"] = list(self.target_modules)
        return doc


def hash_files(directory: Path, names: list[str]) -> dict[str, str]:
    return {name: file_sha256(directory / name) for name in sorted(names)}


def write_manifest(directory: Path, manifest: TrainManifest) -> Path:
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((directory / MANIFEST_FILE).read_text())
    return doc
