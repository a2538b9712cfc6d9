"""Training data handling (pure), the demo datasets, the CLI, and a real short training run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from adapters import cli
from adapters.artifact import compute_digest, validate_artifact
from adapters.datasets import SYSTEM_PROMPTS, dataset_path
from adapters.errors import DatasetError
from adapters.manifest import read_manifest
from adapters.train import IGNORE, Message, encode_example, load_examples, segment_conversation
from tests.fixtures.models import REPO_ROOT, TinyModels


def chatml(messages: Sequence[Message], gen: bool) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if gen else "")


CONVERSATION: list[Message] = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2"},
]


def test_only_assistant_turns_are_targets() -> None:
    pieces = segment_conversation(CONVERSATION, chatml)
    assert "".join(text for text, _ in pieces) == chatml(CONVERSATION, False)
    targets = [text for text, is_target in pieces if is_target]
    assert targets == ["A1<|im_end|>\n", "A2<|im_end|>\n"]


def test_encode_masks_prompt_tokens_and_truncates() -> None:
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    ids, labels = encode_example(CONVERSATION, chatml, encode, max_len=10_000)
    assert len(ids) == len(labels) == len(chatml(CONVERSATION, False))
    learned = "".join(chr(t) for t in labels if t != IGNORE)
    assert learned == "A1<|im_end|>\nA2<|im_end|>\n"
    ids, labels = encode_example(CONVERSATION, chatml, encode, max_len=7)
    assert len(ids) == len(labels) == 7


def test_template_that_is_not_prefix_stable_is_refused() -> None:
    def unstable(messages: Sequence[Message], gen: bool) -> str:
        return str(len(messages)) + chatml(messages, gen)

    with pytest.raises(DatasetError):
        segment_conversation(CONVERSATION, unstable)


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[]",
        '{"messages": []}',
        '{"messages": [{"role": "user", "content": "hi"}]}',
        '{"messages": [{"role": "wizard", "content": "hi"},'
        ' {"role": "assistant", "content": "x"}]}',
        '{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}',
    ],
)
def test_bad_dataset_lines(tmp_path: Path, line: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DatasetError):
        load_examples(path)


@pytest.mark.parametrize("name", ["support_triage", "pirate"])
def test_demo_datasets_are_well_formed(name: str) -> None:
    examples = load_examples(dataset_path(name))
    assert 40 <= len(examples) <= 80
    for messages in examples:
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert messages[0]["content"] == SYSTEM_PROMPTS[name]


def test_support_triage_answers_are_compact_json_with_known_labels() -> None:
    seen = set()
    for messages in load_examples(dataset_path("support_triage")):
        answer = messages[-1]["content"]
        doc = json.loads(answer)
        assert set(doc) == {"sentiment", "topic"}
        assert doc["sentiment"] in {"positive", "neutral", "negative"}
        assert doc["topic"] in {"billing", "shipping", "technical", "account", "other"}
        assert answer == json.dumps(doc, separators=(",", ":"))
        seen.add((doc["sentiment"], doc["topic"]))
    assert len(seen) == 15  # every combination is taught


def test_cli_validate_prints_info_or_exits_2(
    tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    store, rel = str(tiny_models.store_root), tiny_models.adapter_relpaths[0]
    args = ["adapters", "validate", "--store", store, rel, "--base-model"]
    assert cli.main([*args, "tiny-llama"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rank"] == 8
    assert doc["digest"] == compute_digest(tiny_models.adapter_dirs[0])
    code = cli.main([*args, "other"])
    assert code == 2
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "adapter_incompatible"


def test_short_training_run_writes_a_valid_adapter(tiny_models: TinyModels, tmp_path: Path) -> None:
    """Real peft training on the tiny model (3 steps), through the CLI, in a subprocess."""
    out = tmp_path / "store" / "trained"
    cmd = [sys.executable, "-m", "adapters.cli", "adapters", "train",
           "--data", str(dataset_path("pirate")), "--out", str(out),
           "--base", str(tiny_models.base_dir), "--base-model-id", tiny_models.served_name,
           "--steps", "3", "--batch-size", "2", "--rank", "4",
           "--target-modules", "q_proj,v_proj"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["steps"] == 3
    info = validate_artifact(
        tmp_path / "store",
        "trained",
        base_model=tiny_models.served_name,
        max_rank=16,
        supported_modules=["q_proj", "v_proj"],
        max_bytes=10**7,
    )
    assert info.rank == 4
    assert info.target_modules == ("q_proj", "v_proj")
    manifest = read_manifest(out)
    assert manifest["base_model"] == tiny_models.served_name
    assert manifest["dataset_examples"] == len(load_examples(dataset_path("pirate")))
    assert manifest["files"]["adapter_model.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "loragate_manifest.json",
    ]
    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert again.returncode == 2  # adapters are immutable: no silent overwrite
    assert "exists" in again.stderr
