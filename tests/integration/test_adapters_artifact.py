"""Artifact validation: every refusal code, on real files, plus fuzzing of the two parsers."""

from __future__ import annotations

import json
import os
import pickle
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.artifact import (
    ArtifactInfo,
    check_relpath,
    compute_digest,
    validate_artifact,
    verify_digest,
)
from adapters.errors import ArtifactError
from adapters.safetensors_header import parse_header
from tests.fixtures.models import TinyModels, write_safetensors, write_synthetic_adapter

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def validate(
    store: Path,
    rel: str,
    *,
    base_model: str = "tiny-llama",
    max_rank: int = 16,
    max_bytes: int = 10 * 1024 * 1024,
) -> ArtifactInfo:
    return validate_artifact(
        store,
        rel,
        base_model=base_model,
        max_rank=max_rank,
        supported_modules=MODULES,
        max_bytes=max_bytes,
    )


def refused(store: Path, rel: str, **overrides: Any) -> str:
    with pytest.raises(ArtifactError) as info:
        validate(store, rel, **overrides)
    return info.value.code


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    write_synthetic_adapter(root / "acme" / "good")
    return root


class _Payload:
    """Unpickling this creates `marker`: proof that a loader executed the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_valid_synthetic_artifact(store: Path) -> None:
    info = validate(store, "acme/good")
    assert info.path == (store / "acme" / "good").resolve()
    assert info.relpath == "acme/good"
    assert info.rank == 8
    assert info.alpha == 16.0
    assert info.target_modules == ("q_proj", "v_proj")
    assert info.digest.startswith("sha256:")
    assert info.digest == compute_digest(store / "acme" / "good")


def test_real_tiny_adapter_validates(tiny_models: TinyModels) -> None:
    info = validate(tiny_models.store_root, tiny_models.adapter_relpaths[0])
    assert info.rank == 8
    assert info.target_modules == tuple(sorted(MODULES))
    assert info.base_model == "tiny-llama"
    digests = {validate(tiny_models.store_root, r).digest for r in tiny_models.adapter_relpaths}
    assert len(digests) == len(tiny_models.adapter_relpaths)


def test_digest_covers_both_files_and_detects_change(store: Path) -> None:
    directory = store / "acme" / "good"
    digest = compute_digest(directory)
    verify_digest(directory, digest)
    (directory / "README.md").write_text("harmless, not part of the digest\n")
    verify_digest(directory, digest)
    config = json.loads((directory / "adapter_config.json").read_text())
    config["lora_alpha"] = 3
    (directory / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError) as info:
        verify_digest(directory, digest)
    assert info.value.code == "digest_mismatch"


def test_verify_digest_on_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as info:
        verify_digest(tmp_path, "sha256:00")
    assert info.value.code == "digest_mismatch"


@pytest.mark.parametrize(
    "rel", ["", "/etc", "acme/\x00good", "acme\\good", "acme/go\x01od", "acme/\x7f", "a" * 256, "."]
)
def test_invalid_name(store: Path, rel: str) -> None:
    assert refused(store, rel) == "invalid_name"


@pytest.mark.parametrize("rel", ["..", "../store/acme/good", "acme/../../x", "acme/good/../.."])
def test_dotdot_is_outside_store(store: Path, rel: str) -> None:
    assert refused(store, rel) == "artifact_outside_store"


def test_symlinked_directory_escaping_the_store(store: Path, tmp_path: Path) -> None:
    outside = write_synthetic_adapter(tmp_path / "outside" / "evil")
    (store / "acme" / "link").symlink_to(outside, target_is_directory=True)
    assert refused(store, "acme/link") == "artifact_outside_store"


def test_symlink_inside_the_store_is_refused_too(store: Path) -> None:
    (store / "acme" / "alias").symlink_to(store / "acme" / "good", target_is_directory=True)
    assert refused(store, "acme/alias") == "artifact_outside_store"


def test_symlinked_file_inside_artifact(store: Path, tmp_path: Path) -> None:
    directory = store / "acme" / "good"
    secret = tmp_path / "secret.json"
    secret.write_text((directory / "adapter_config.json").read_text())
    (directory / "adapter_config.json").unlink()
    (directory / "adapter_config.json").symlink_to(secret)
    assert refused(store, "acme/good") == "artifact_outside_store"


@pytest.mark.parametrize(
    "name", ["adapter_model.bin", "model.pt", "x.pth", "x.pkl", "x.ckpt", "x.pickle", "X.BIN"]
)
def test_pickle_is_refused_without_being_opened(store: Path, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    probe = tmp_path / "probe"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload.replace(str(marker).encode(), str(probe).encode())).close()
    assert probe.exists(), "the payload must really execute when unpickled"
    (store / "acme" / "good" / name).write_bytes(payload)
    assert refused(store, "acme/good") == "unsafe_artifact_format"
    assert not marker.exists()


def test_pickle_named_file_that_would_block_on_open(store: Path) -> None:
    """A FIFO blocks forever when opened: passing this proves we decide by name alone."""
    os.mkfifo(store / "acme" / "good" / "adapter_model.bin")
    assert refused(store, "acme/good") == "unsafe_artifact_format"


@pytest.mark.parametrize("name", ["notes.txt", "tokenizer.json", "adapter_model.safetensors.1"])
def test_unexpected_files_are_refused(store: Path, name: str) -> None:
    (store / "acme" / "good" / name).write_text("x")
    assert refused(store, "acme/good") == "unsafe_artifact_format"


def test_subdirectory_is_refused(store: Path) -> None:
    (store / "acme" / "good" / "nested").mkdir()
    assert refused(store, "acme/good") == "unsafe_artifact_format"


def test_harmless_files_are_allowed(store: Path) -> None:
    (store / "acme" / "good" / "README.md").write_text("# adapter\n")
    (store / "acme" / "good" / "loragate_manifest.json").write_text("{}")
    info = validate(store, "acme/good")
    assert info.size_bytes > 0


def test_missing_directory_and_files(store: Path) -> None:
    assert refused(store, "acme/nothing") == "artifact_invalid"
    (store / "acme" / "good" / "adapter_config.json").unlink()
    assert refused(store, "acme/good") == "artifact_invalid"
    write_synthetic_adapter(store / "acme" / "w")
    (store / "acme" / "w" / "adapter_model.safetensors").unlink()
    assert refused(store, "acme/w") == "artifact_invalid"
    (store / "acme" / "f").write_text("a file, not a directory")
    assert refused(store, "acme/f") == "artifact_invalid"


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'{"peft_type": "PREFIX_TUNING", "base_model_name_or_path": "tiny-llama", "r": 8}',
        b'{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}',
        b'{"peft_type": "LORA", "base_model_name_or_path": "tiny-llama", "r": "8",'
        b' "target_modules": ["q_proj"]}',
        b'{"peft_type": "LORA", "base_model_name_or_path": "tiny-llama", "r": 8,'
        b' "target_modules": []}',
        b"\xff\xfe",
    ],
)
def test_bad_config(store: Path, raw: bytes) -> None:
    (store / "acme" / "good" / "adapter_config.json").write_bytes(raw)
    assert refused(store, "acme/good") == "artifact_invalid"


def _weights(store: Path) -> Path:
    return store / "acme" / "good" / "adapter_model.safetensors"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x01\x00",
        (2**40).to_bytes(8, "little") + b"{}",
        (100).to_bytes(8, "little") + b"{}",
        (4).to_bytes(8, "little") + b"nope",
        (2).to_bytes(8, "little") + b"[]",
    ],
)
def test_bad_safetensors_header(store: Path, blob: bytes) -> None:
    _weights(store).write_bytes(blob)
    assert refused(store, "acme/good") == "artifact_invalid"


def test_header_offsets_must_match_data(store: Path) -> None:
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    header = {name: {"dtype": "F32", "shape": [8, 256], "data_offsets": [0, 16]}}
    blob = json.dumps(header).encode()
    _weights(store).write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(16))
    assert refused(store, "acme/good") == "artifact_invalid"


@pytest.mark.parametrize(
    "tensors",
    [
        {"x.q_proj.lora_A.weight": ("F32", (4, 256)), "x.q_proj.lora_B.weight": ("F32", (256, 4))},
        {"x.q_proj.lora_A.weight": ("F32", (8, 256)), "x.q_proj.lora_B.weight": ("F32", (256, 4))},
        {"x.q_proj.lora_A.weight": ("F32", (8, 256))},
        {"x.k_proj.lora_A.weight": ("F32", (8, 256)), "x.k_proj.lora_B.weight": ("F32", (256, 8))},
        {"x.q_proj.weight": ("F32", (8, 8))},
        {"x.q_proj.lora_A.weight": ("F32", (8,)), "x.q_proj.lora_B.weight": ("F32", (256, 8))},
        {},
    ],
    ids=[
        "rank-vs-r",
        "a-b-mismatch",
        "missing-b",
        "module-not-targeted",
        "not-lora",
        "1d",
        "empty",
    ],
)
def test_tensors_inconsistent_with_config(
    store: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]
) -> None:
    write_safetensors(_weights(store), tensors)
    assert refused(store, "acme/good") == "artifact_invalid"


def test_size_over_cap(store: Path) -> None:
    assert refused(store, "acme/good", max_bytes=1000) == "artifact_invalid"


def test_base_model_mismatch(store: Path) -> None:
    assert refused(store, "acme/good", base_model="smollm2-135m-instruct") == "adapter_incompatible"


def test_rank_above_max(store: Path) -> None:
    write_synthetic_adapter(store / "acme" / "big", rank=32)
    assert refused(store, "acme/big") == "adapter_incompatible"
    assert validate(store, "acme/big", max_rank=32).rank == 32


def test_unsupported_target_module(store: Path) -> None:
    write_synthetic_adapter(store / "acme" / "mlp", modules=("q_proj", "gate_proj"))
    assert refused(store, "acme/mlp") == "adapter_incompatible"
    write_synthetic_adapter(
        store / "acme" / "decl", modules=("q_proj",), declared_modules=("q_proj", "embed_tokens")
    )
    assert refused(store, "acme/decl") == "adapter_incompatible"


# ---- fuzzing -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=2**20))
def test_header_parser_only_raises_artifact_errors(blob: bytes, extra: int) -> None:
    try:
        tensors = parse_header(blob, len(blob) + extra)
    except ArtifactError as exc:
        code = exc.code
    else:
        assert all(0 <= t.begin <= t.end <= len(blob) + extra for t in tensors.values())
        return
    assert code == "artifact_invalid"


# Two levels deep without st.recursive, whose "extend does not use its argument" check misfires
# at random (warnings are errors here).
_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
_level1 = (
    _scalars
    | st.lists(_scalars, max_size=4)
    | st.dictionaries(st.text(max_size=6), _scalars, max_size=4)
)
_json_values = (
    _level1
    | st.lists(_level1, max_size=4)
    | st.dictionaries(st.text(max_size=6), _level1, max_size=4)
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _json_values, max_size=4), st.binary(max_size=64))
def test_header_parser_on_arbitrary_json(doc: dict[str, object], data: bytes) -> None:
    blob = json.dumps(doc).encode()
    raw = len(blob).to_bytes(8, "little") + blob + data
    try:
        tensors = parse_header(raw, len(raw))
    except ArtifactError as exc:
        code = exc.code
    else:
        assert sum(t.end - t.begin for t in tensors.values()) == len(data)
        return
    assert code == "artifact_invalid"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["F32", "BF16", "I8"]),
            st.lists(st.integers(0, 5), max_size=3),
        ),
        max_size=5,
    )
)
def test_header_parser_accepts_well_formed_files(specs: list[tuple[str, list[int]]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.safetensors"
        sizes = {"F32": 4, "BF16": 2, "I8": 1}
        tensors = {f"t{i}": (dtype, tuple(shape)) for i, (dtype, shape) in enumerate(specs)}
        header: dict[str, object] = {}
        offset = 0
        for name, (dtype, shape) in tensors.items():
            n = sizes[dtype]
            for dim in shape:
                n *= dim
            header[name] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            offset += n
        blob = json.dumps(header).encode()
        path.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(offset))
        parsed = parse_header(path.read_bytes(), path.stat().st_size)
        assert {k: (v.dtype, v.shape) for k, v in parsed.items()} == tensors


_path_chars = st.sampled_from([*string.ascii_letters[:6], "/", ".", "..", "\\", "\x00", "\n", "-"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_path_chars, max_size=40).map("".join))
def test_relpath_check_never_lets_a_path_escape(rel: str) -> None:
    try:
        parts = check_relpath(rel)
    except ArtifactError as exc:
        code = exc.code
        assert code in {"invalid_name", "artifact_outside_store"}
        return
    assert parts
    assert all(p not in ("", ".", "..") and "/" not in p and "\x00" not in p for p in parts)
    root = Path("/nonexistent-store-root")
    assert Path(os.path.normpath(root.joinpath(*parts))).is_relative_to(root)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(["acme", "good", "..", ".", "link", "store", "x", "/"]), max_size=6)
)
def test_validate_never_returns_a_path_outside_the_store(parts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "store"
        write_synthetic_adapter(root / "acme" / "good")
        write_synthetic_adapter(Path(d) / "x" / "good")
        (root / "acme" / "link").symlink_to(Path(d) / "x", target_is_directory=True)
        try:
            info = validate(root, "/".join(parts))
        except ArtifactError as exc:
            code = exc.code
            assert code in {
                "invalid_name",
                "artifact_outside_store",
                "artifact_invalid",
                "unsafe_artifact_format",
            }
        else:
            assert info.path.is_relative_to(root.resolve())
            assert info.path == (root / "acme" / "good").resolve()
