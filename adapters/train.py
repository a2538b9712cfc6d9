"""Train a LoRA adapter with peft from a JSONL chat dataset, small enough for two CPU cores.

Each line is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`. The loss
covers only what the assistant says (plus its end-of-turn token, so it learns to stop): the system
prompt and the question are context, not targets. The conversation is rendered with the base
model's own chat template, so training sees exactly the tokens vLLM will build at serving time.

The adapter is saved as safetensors only, with `base_model_name_or_path` set to the *served model
id* (what the gateway's validator compares), plus `loragate_manifest.json`; everything is written to
a temp dir that is renamed into place at the end, so a crash never leaves a half-written adapter.

Example:
    manifest = train_lora(TrainConfig(data=Path("pirate.jsonl"), out=Path(".loragate/adapters/p1"),
                                      base_dir=build_base_model(), steps=40))
    manifest.final_loss
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.artifact import CONFIG_FILE, WEIGHTS_FILE
from adapters.errors import DatasetError
from adapters.files import replace_dir, set_base_model_id
from adapters.manifest import TrainManifest, hash_files, write_manifest

ROLES = frozenset({"system", "user", "assistant"})
MAX_EXAMPLES = 100_000
IGNORE = -100

Message = dict[str, str]
Render = Callable[[Sequence[Message], bool], str]


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    base_dir: Path
    base_model_id: str = "smollm2-135m-instruct"
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    steps: int = 40
    lr: float = 2e-3
    seed: int = 0
    batch_size: int = 8
    max_len: int = 256
    overwrite: bool = False
    progress: bool = True
    threads: int = 0  # 0: one per core; fewer is faster on an oversubscribed machine


def load_examples(path: Path) -> list[list[Message]]:
    """Parse and check the dataset before any model is loaded, so mistakes fail in milliseconds."""
    examples: list[list[Message]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc: Any = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path.name}:{lineno}: not JSON") from exc
            messages = doc.get("messages") if isinstance(doc, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DatasetError(f"{path.name}:{lineno}: needs a non-empty 'messages' list")
            for m in messages:
                if (
                    not isinstance(m, dict)
                    or m.get("role") not in ROLES
                    or not isinstance(m.get("content"), str)
                ):
                    raise DatasetError(f"{path.name}:{lineno}: each message needs role and content")
            if not any(m["role"] == "assistant" for m in messages):
                raise DatasetError(f"{path.name}:{lineno}: no assistant message to learn from")
            examples.append([{"role": m["role"], "content": m["content"]} for m in messages])
            if len(examples) > MAX_EXAMPLES:
                raise DatasetError(f"{path.name}: more than {MAX_EXAMPLES} examples")
    if not examples:
        raise DatasetError(f"{path.name}: no examples")
    return examples


def segment_conversation(messages: Sequence[Message], render: Render) -> list[tuple[str, bool]]:
    """Pure: cut the rendered conversation into (text, is_target) pieces.

    `render(messages, add_generation_prompt)` is the chat template. Each assistant turn is the text
    between "everything before, plus the generation prompt" and "everything up to this turn".
    """
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = render(messages[:i], True)
            if not prompt.startswith(done):
                raise DatasetError("chat template is not prefix-stable; cannot mask the prompt")
            pieces.append((prompt[len(done) :], False))
            done = prompt
            target = True
        else:
            target = False
        upto = render(messages[: i + 1], False)
        if not upto.startswith(done):
            raise DatasetError("chat template is not prefix-stable; cannot mask the prompt")
        pieces.append((upto[len(done) :], target))
        done = upto
    return [(text, target) for text, target in pieces if text]


def encode_example(
    messages: Sequence[Message],
    render: Render,
    encode: Callable[[str], list[int]],
    max_len: int,
) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE outside assistant turns), truncated to `max_len`."""
    ids: list[int] = []
    labels: list[int] = []
    for text, target in segment_conversation(messages, render):
        piece = encode(text)
        ids.extend(piece)
        labels.extend(piece if target else [IGNORE] * len(piece))
    return ids[:max_len], labels[:max_len]


def dataset_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_lora(cfg: TrainConfig) -> TrainManifest:
    """Train, save atomically to `cfg.out`, and return the manifest written next to the weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cfg.out.resolve()
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; adapters are immutable (choose a new directory)")
    examples = load_examples(cfg.data)
    started = time.monotonic()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or max(1, os.cpu_count() or 1))
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_dir, local_files_only=True)

    def render(messages: Sequence[Message], gen: bool) -> str:
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=gen
        )
        return str(text)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    encoded = [encode_example(m, render, encode, cfg.max_len) for m in examples]
    if not any(label != IGNORE for _, labels in encoded for label in labels):
        raise DatasetError("no assistant tokens left after truncation; raise max_len")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    model = AutoModelForCausalLM.from_pretrained(
        cfg.base_dir, dtype=torch.float32, local_files_only=True
    )
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        target_modules=list(cfg.target_modules),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order_rng = random.Random(cfg.seed)  # noqa: S311 (batch order, not crypto)
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.data.name}", disable=not cfg.progress)
    for _ in bar:
        batch = []
        for _ in range(cfg.batch_size):
            if not order:
                order = list(range(len(encoded)))
                order_rng.shuffle(order)
            batch.append(encoded[order.pop()])
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        set_base_model_id(tmp, cfg.base_model_id)
        (tmp / "README.md").unlink(missing_ok=True)  # peft's model card names local paths
        for leftover in tmp.iterdir():
            if leftover.name not in (CONFIG_FILE, WEIGHTS_FILE):
                leftover.unlink()
        tail = losses[-min(5, len(losses)) :]
        manifest = TrainManifest(
            base_model=cfg.base_model_id,
            rank=cfg.rank,
            alpha=cfg.alpha,
            target_modules=tuple(cfg.target_modules),
            dataset_sha256=dataset_sha256(cfg.data),
            dataset_examples=len(examples),
            steps=cfg.steps,
            lr=cfg.lr,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            final_loss=round(sum(tail) / len(tail), 4) if tail else float("nan"),
            duration_s=round(time.monotonic() - started, 1),
            files=hash_files(tmp, [CONFIG_FILE, WEIGHTS_FILE]),
        )
        write_manifest(tmp, manifest)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
