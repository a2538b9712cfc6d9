"""Decide whether a LoRA artifact on disk may be handed to an engine, without ever loading it.

An adapter path comes from an admin request, and the engine will read whatever we approve with
torch. So we refuse, in this order and each with its own code:

    invalid_name            the relpath itself is malformed (empty, absolute, NUL, backslash,
                            control characters, over 255 characters)
    artifact_outside_store  `..` components or a symlink on the way to or inside the artifact
    unsafe_artifact_format  a pickle-capable file (.bin/.pt/.pth/.pkl/.ckpt/.pickle) or anything
                            else not on the allow-list; refused by name, never opened
    artifact_invalid        missing files, bad JSON, not LoRA, bad safetensors header, tensors
                            that do not match the config, size over the cap
    adapter_incompatible    trained for another base model, rank above the engine's max, a target
                            module the engine does not support

Files are opened with O_NOFOLLOW so a symlink swapped in after the check is not followed either.

Example:
    info = validate_artifact(Path(".loragate/adapters"), "acme/support-v3", base_model="tiny-llama",
                             max_rank=16, supported_modules=["q_proj", "v_proj"], max_bytes=2**29)
    info.digest  # "sha256:..."
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import ArtifactError
from adapters.safetensors_header import MAX_HEADER_BYTES, TensorInfo, header_length, parse_header

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
HARMLESS_FILES = frozenset({"README.md", "loragate_manifest.json"})
ALLOWED_FILES = frozenset(REQUIRED_FILES) | HARMLESS_FILES
UNSAFE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle"})
# What PEFT, TRL, Axolotl and Unsloth save beside the adapter that the engine never needs: left out
# of a pushed artifact and reported as skipped, never opened (a few are pickles: never loaded).
TRAINER_FILES = frozenset(
    {
        "README.md",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "generation_config.json",
        "training_args.bin",
        "trainer_state.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "scaler.pt",
    }
)
# Most severe first: one error names every refused file and carries the worst code.
_SEVERITY = ("invalid_name", "artifact_outside_store", "unsafe_artifact_format", "artifact_invalid")
MAX_RELPATH_CHARS = 255
MAX_CONFIG_BYTES = 1024 * 1024

# PEFT names weights "<prefix>.<module path>.lora_A.weight" / ".lora_B.weight".
_LORA_TENSOR = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ArtifactInfo:
    path: Path
    relpath: str
    digest: str
    base_model: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    size_bytes: int


def check_relpath(relpath: str) -> tuple[str, ...]:
    """Pure: split a store-relative path into safe components or raise."""
    if not relpath or len(relpath) > MAX_RELPATH_CHARS:
        raise ArtifactError("adapter path must be 1-255 characters", code="invalid_name")
    if "\\" in relpath or _CONTROL.search(relpath):
        raise ArtifactError(
            "adapter path contains a backslash or control character", code="invalid_name"
        )
    if relpath.startswith("/"):
        raise ArtifactError(
            "adapter path must be relative to the adapter store", code="invalid_name"
        )
    parts = tuple(p for p in relpath.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise ArtifactError("adapter path leaves the adapter store", code="artifact_outside_store")
    if not parts:
        raise ArtifactError("adapter path names the store root itself", code="invalid_name")
    return parts


def _resolve_inside(store_root: Path, parts: tuple[str, ...]) -> Path:
    """Walk component by component with lstat so no symlink on the way is ever followed."""
    root = store_root.resolve()
    current = root
    for part in parts:
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError as exc:
            raise ArtifactError(f"adapter path not found: {part}", code="artifact_invalid") from exc
        except OSError as exc:
            raise ArtifactError(
                f"adapter path unreadable: {part}", code="artifact_invalid"
            ) from exc
        if stat.S_ISLNK(st.st_mode):
            raise ArtifactError("adapter path contains a symlink", code="artifact_outside_store")
    if not current.is_dir():
        raise ArtifactError("adapter path is not a directory", code="artifact_invalid")
    # Belt and braces: after refusing symlinks, the real path must still be under the root.
    if not current.resolve().is_relative_to(root):
        raise ArtifactError("adapter path leaves the adapter store", code="artifact_outside_store")
    return current


@dataclass(frozen=True)
class Listing:
    kept: dict[str, int]  # filename -> size
    skipped: tuple[str, ...]
    refused: tuple[tuple[str, str, str], ...]  # (filename, code, why)


def classify_name(name: str, *, is_file: bool, is_link: bool, skip_trainer_files: bool) -> str:
    """Pure: `keep`, `skip`, or the refusal code for one directory entry (by name and type)."""
    if is_link:
        return "artifact_outside_store"
    if skip_trainer_files and name in TRAINER_FILES and is_file:
        return "skip"
    if os.path.splitext(name)[1].lower() in UNSAFE_SUFFIXES:
        return "unsafe_artifact_format"
    if name not in ALLOWED_FILES or not is_file:
        return "unsafe_artifact_format"
    return "keep"


_WHY = {
    "artifact_outside_store": "symlink",
    "unsafe_artifact_format": "not an adapter file",
    "invalid_name": "bad name",
}


def refusal(refused: Sequence[tuple[str, str, str]]) -> ArtifactError:
    """One error naming every refused file, with the most severe code among them."""
    codes = {code for _, code, _ in refused}
    code = next(c for c in _SEVERITY if c in codes)
    listed = ", ".join(f"{name} ({why})" for name, _, why in refused)
    return ArtifactError(f"refused files: {listed}", code=code)


def list_artifact(directory: Path, *, skip_trainer_files: bool = False) -> Listing:
    """Sort every entry into kept, skipped (trainer leftovers) or refused; nothing is opened."""
    kept: dict[str, int] = {}
    skipped: list[str] = []
    refused: list[tuple[str, str, str]] = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        link = entry.is_symlink()
        verdict = classify_name(
            entry.name,
            is_file=not link and entry.is_file(follow_symlinks=False),
            is_link=link,
            skip_trainer_files=skip_trainer_files,
        )
        if verdict == "keep":
            kept[entry.name] = entry.stat(follow_symlinks=False).st_size
        elif verdict == "skip":
            skipped.append(entry.name)
        else:
            pickle = os.path.splitext(entry.name)[1].lower() in UNSAFE_SUFFIXES
            why = "pickle-capable" if pickle and not link else _WHY[verdict]
            refused.append((entry.name, verdict, why))
    for name in REQUIRED_FILES:
        if name not in kept and not any(r[0] == name for r in refused):
            refused.append((name, "artifact_invalid", "missing"))
    return Listing(kept, tuple(skipped), tuple(refused))


def check_listing(directory: Path, *, skip_trainer_files: bool = False) -> dict[str, int]:
    """Refuse by name and type only (nothing is opened); return {filename: size} of kept files."""
    listing = list_artifact(directory, skip_trainer_files=skip_trainer_files)
    if listing.refused:
        raise refusal(listing.refused)
    return listing.kept


def _open_nofollow(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        code = "artifact_outside_store" if os.path.islink(path) else "artifact_invalid"
        raise ArtifactError(f"cannot open {path.name}", code=code) from exc


def _read_bounded(path: Path, limit: int) -> bytes:
    fd = _open_nofollow(path)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{path.name} is too large", code="artifact_invalid")
    return data


def read_config(path: Path) -> dict[str, Any]:
    raw = _read_bounded(path, MAX_CONFIG_BYTES)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{CONFIG_FILE} is not valid JSON", code="artifact_invalid") from exc
    if not isinstance(doc, dict):
        raise ArtifactError(f"{CONFIG_FILE} must be a JSON object", code="artifact_invalid")
    return doc


def read_tensors(path: Path) -> dict[str, TensorInfo]:
    """Read only the header of the safetensors file (bounded), never the tensor data."""
    fd = _open_nofollow(path)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = header_length(f.read(8), size)
        blob = f.read(min(n, MAX_HEADER_BYTES))
    return parse_header(len(blob).to_bytes(8, "little") + blob, size)


@dataclass(frozen=True)
class _LoraConfig:
    base_model: str
    rank: int
    ranks: frozenset[int]
    alpha: float
    target_modules: tuple[str, ...] | None  # None: given as a regex
    target_regex: str | None


def parse_config(doc: dict[str, Any]) -> _LoraConfig:
    """Pure: the fields of a PEFT adapter_config.json we rely on, type-checked."""

    def bad(message: str) -> ArtifactError:
        return ArtifactError(f"{CONFIG_FILE}: {message}", code="artifact_invalid")

    if doc.get("peft_type") != "LORA":
        raise bad("peft_type must be LORA")
    base = doc.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise bad("base_model_name_or_path missing")
    r = doc.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise bad("r must be a positive integer")
    alpha = doc.get("lora_alpha", 8)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise bad("lora_alpha must be a number")
    pattern = doc.get("rank_pattern") or {}
    if not isinstance(pattern, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pattern.values()
    ):
        raise bad("rank_pattern must map names to positive integers")
    ranks = frozenset({r, *pattern.values()})
    targets = doc.get("target_modules")
    if isinstance(targets, str) and targets:
        return _LoraConfig(base, max(ranks), ranks, float(alpha), None, targets)
    if (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise bad("target_modules must be a non-empty list of names")
    return _LoraConfig(base, max(ranks), ranks, float(alpha), tuple(sorted(set(targets))), None)


def check_tensors(config: _LoraConfig, tensors: dict[str, TensorInfo]) -> tuple[str, ...]:
    """Pure: every tensor is a lora_A/lora_B pair of a targeted module with a configured rank.

    Returns the sorted leaf module names the weights actually touch.
    """

    def bad(message: str) -> ArtifactError:
        return ArtifactError(f"{WEIGHTS_FILE}: {message}", code="artifact_invalid")

    if not tensors:
        raise bad("no tensors")
    pairs: dict[str, dict[str, TensorInfo]] = {}
    for name, info in tensors.items():
        m = _LORA_TENSOR.match(name)
        if m is None:
            raise bad(f"unexpected tensor {name!r}")
        pairs.setdefault(m["module"], {})[m["ab"]] = info
    leaves: set[str] = set()
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise bad(f"module {module!r} lacks lora_A or lora_B")
        a, b = pair["A"], pair["B"]
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise bad(f"module {module!r}: lora weights must be 2-D")
        if a.shape[0] not in config.ranks or b.shape[1] != a.shape[0]:
            raise bad(f"module {module!r}: lora_A/lora_B shapes do not match r")
        if min(*a.shape, *b.shape) < 1:
            raise bad(f"module {module!r}: empty lora weights")
        leaf = module.rsplit(".", 1)[-1]
        if config.target_modules is not None:
            if leaf not in config.target_modules:
                raise bad(f"module {module!r} is not in target_modules")
        elif config.target_regex is not None:
            try:
                hit = re.search(config.target_regex, module) is not None
            except re.error as exc:
                raise bad("target_modules regex is invalid") from exc
            if not hit:
                raise bad(f"module {module!r} does not match target_modules")
        leaves.add(leaf)
    return tuple(sorted(leaves))


def _digest_chunks(directory: Path) -> Iterator[bytes]:
    for name in REQUIRED_FILES:
        fd = _open_nofollow(directory / name)
        with os.fdopen(fd, "rb") as f:
            yield name.encode() + b"\0" + str(os.fstat(f.fileno()).st_size).encode() + b"\0"
            while chunk := f.read(1 << 20):
                yield chunk


def compute_digest(directory: Path) -> str:
    """sha256 over adapter_config.json then adapter_model.safetensors, each framed as
    `<name>\\0<size>\\0<bytes>` so no two different artifacts share a byte stream."""
    h = hashlib.sha256()
    for chunk in _digest_chunks(directory):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def verify_digest(path: Path, expected: str) -> None:
    """Refuse an artifact whose bytes changed since it was registered (e.g. before loading it)."""
    try:
        actual = compute_digest(path)
    except ArtifactError as exc:
        raise ArtifactError(f"cannot verify digest: {exc.message}", code="digest_mismatch") from exc
    if actual != expected:
        raise ArtifactError(
            f"artifact digest changed: expected {expected}, found {actual}", code="digest_mismatch"
        )


def validate_artifact(
    store_root: Path,
    relpath: str,
    *,
    base_model: str,
    max_rank: int,
    supported_modules: Sequence[str],
    max_bytes: int,
    base_model_aliases: Sequence[str] = (),
) -> ArtifactInfo:
    parts = check_relpath(relpath)
    directory = _resolve_inside(store_root, parts)
    return check_directory(
        directory,
        "/".join(parts),
        check_listing(directory),
        base_model=base_model,
        max_rank=max_rank,
        supported_modules=supported_modules,
        max_bytes=max_bytes,
        base_model_aliases=base_model_aliases,
    )


def check_directory(
    directory: Path,
    relpath: str,
    sizes: dict[str, int],
    *,
    base_model: str,
    max_rank: int,
    supported_modules: Sequence[str],
    max_bytes: int,
    base_model_aliases: Sequence[str] = (),
) -> ArtifactInfo:
    """Check the kept files of a listed directory (`sizes`) and digest them.

    `base_model_aliases`: other names of the served base model (the hub id trainers record in
    `base_model_name_or_path`, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`)."""
    total = sum(sizes.values())
    if total > max_bytes:
        raise ArtifactError(
            f"artifact is {total} bytes, over the {max_bytes}-byte cap", code="artifact_invalid"
        )
    config = parse_config(read_config(directory / CONFIG_FILE))
    modules = check_tensors(config, read_tensors(directory / WEIGHTS_FILE))
    for problem in compatibility(
        config, modules, base_model, max_rank, supported_modules, base_model_aliases
    ):
        raise ArtifactError(problem, code="adapter_incompatible")
    return ArtifactInfo(
        path=directory,
        relpath=relpath,
        digest=compute_digest(directory),
        base_model=config.base_model,
        rank=config.rank,
        alpha=config.alpha,
        target_modules=modules,
        size_bytes=total,
    )


def compatibility(
    config: _LoraConfig,
    modules: Sequence[str],
    base_model: str,
    max_rank: int,
    supported_modules: Sequence[str],
    base_model_aliases: Sequence[str] = (),
) -> list[str]:
    """Pure: every reason the engines could not serve this adapter (empty: compatible)."""
    problems: list[str] = []
    if config.base_model != base_model and config.base_model not in base_model_aliases:
        known = ", ".join(repr(n) for n in (base_model, *base_model_aliases))
        problems.append(f"adapter was trained for {config.base_model!r}, engines serve {known}")
    if config.rank > max_rank:
        problems.append(f"adapter rank {config.rank} is above the engine maximum {max_rank}")
    declared = set(config.target_modules or ())
    unsupported = sorted((set(modules) | declared) - set(supported_modules))
    if unsupported:
        problems.append(f"target modules not supported by the engine: {', '.join(unsupported)}")
    return problems
