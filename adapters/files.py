"""Small filesystem steps shared by the builders: atomic directory replacement and id fix-ups."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished build into place so readers never see a half-written directory."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(dst)


def set_base_model_id(adapter_dir: Path, base_model_id: str) -> None:
    """peft records the local base path; the gateway compares served model ids instead."""
    path = adapter_dir / "adapter_config.json"
    doc: dict[str, Any] = json.loads(path.read_text())
    doc["base_model_name_or_path"] = base_model_id
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
