"""A tiny random-weight Llama and LoRA adapters for it, built offline in seconds for tests.

No model hub is reachable, and tests need a *real* vLLM engine with *real* LoRA files, so we make
both: a 1,024-token byte-level BPE trained on text in this file, a 2-layer Llama (hidden 256, head
size 64, which the CPU attention supports) re-initialised with std 0.08 so greedy output is not one
repeated token, and adapters whose lora_A and lora_B are both random and non-zero so each one
visibly changes the output. Everything is deterministic by seed and saved as safetensors only.

torch / transformers / peft are imported inside the functions: this module is only for `build-tiny`.

Example:
    base = build_tiny_model(Path("/tmp/tiny"))
    build_tiny_lora(base, Path("/tmp/store/a1"), seed=1)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from adapters.files import replace_dir, set_base_model_id

TINY_SERVED_NAME = "tiny-llama"
# Bump when anything below changes what gets built: test caches are keyed by it.
TINY_VERSION = "tiny-v1"
TINY_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A support ticket arrived about a broken order and a
refund. Shipping was late, the parcel was damaged, and the customer asked for help with billing.
Pirates sail the seven seas, hunting treasure and singing songs on the deck of their ship.
What is the capital of France? The capital of France is Paris. Hello, how can I help you today?
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. JSON: {"sentiment": "negative", "topic": "billing"}.
The gateway routes each tenant to its own adapter, with canary releases and rollbacks.
"""


def _write_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",  # noqa: S106 (a token, not a secret)
        eos_token="<|im_end|>",  # noqa: S106 (a token, not a secret)
        unk_token="<|endoftext|>",  # noqa: S106 (a token, not a secret)
        pad_token="<|endoftext|>",  # noqa: S106 (a token, not a secret)
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)


def build_tiny_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny Llama (config, tokenizer, bf16 safetensors) to `out_dir`, atomically."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        _write_tokenizer(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, 0.08)
        model = model.to(torch.bfloat16)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
        model.save_pretrained(tmp, safe_serialization=True)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def build_tiny_lora(
    base_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    rank: int = 8,
    base_model_id: str = TINY_SERVED_NAME,
    target_modules: tuple[str, ...] = TINY_TARGET_MODULES,
    std: float = 0.1,
) -> Path:
    """Write a random LoRA for the tiny model: lora_A and lora_B both non-zero, so it matters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(target_modules), lora_dropout=0.0
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    tmp = Path(tempfile.mkdtemp(prefix=".lora-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        set_base_model_id(tmp, base_model_id)
        (tmp / "README.md").unlink(missing_ok=True)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def build_tiny_set(out_dir: Path, *, loras: int = 3) -> tuple[Path, list[Path]]:
    """The test kit: `<out>/base` and `<out>/adapters/tiny-lora-<i>` (seeds 1..loras)."""
    base = build_tiny_model(out_dir / "base")
    adapters = [
        build_tiny_lora(base, out_dir / "adapters" / f"tiny-lora-{i}", seed=i)
        for i in range(1, loras + 1)
    ]
    return base, adapters
