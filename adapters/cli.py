"""`loragate adapters ...`: build the base models, train, validate artifacts.

`register(subparsers)` adds the command group to the `loragate` console script; every subcommand
sets `func(args) -> int` (the exit code). Heavy imports happen inside the handlers, so `loragate
serve` never pays for torch.

Example:
    parser = argparse.ArgumentParser(prog="loragate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["adapters", "validate", "--store", "s", "a1", "--base-model", "x"])
    sys.exit(args.func(args))
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError, ArtifactError

DEFAULT_SUPPORTED_MODULES = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def _csv(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def cmd_build_base(args: argparse.Namespace) -> int:
    from adapters.basemodel import build_base_model

    print(build_base_model(args.out, cache_dir=args.cache, force=args.force))
    return 0


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from adapters.tinymodel import build_tiny_set

    base, loras = build_tiny_set(args.out, loras=args.loras)
    print(json.dumps({"base": str(base), "adapters": [str(p) for p in loras]}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from adapters.basemodel import BASE_MODEL_ID, DEFAULT_OUT, build_base_model
    from adapters.train import TrainConfig, train_lora

    base = args.base if args.base is not None else build_base_model(DEFAULT_OUT)
    base_id = args.base_model_id or (BASE_MODEL_ID if args.base is None else base.name)
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        base_dir=base,
        base_model_id=base_id,
        rank=args.rank,
        alpha=args.alpha if args.alpha is not None else 2.0 * args.rank,
        target_modules=args.target_modules,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        batch_size=args.batch_size,
        overwrite=args.force,
        threads=args.threads,
    )
    try:
        manifest = train_lora(cfg)
    except (AdapterError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out.resolve()), **manifest.to_json()}, indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from adapters.artifact import validate_artifact

    try:
        info = validate_artifact(
            args.store,
            args.path,
            base_model=args.base_model,
            max_rank=args.max_rank,
            supported_modules=args.supported_modules,
            max_bytes=args.max_bytes,
        )
    except ArtifactError as exc:
        print(json.dumps({"error": {"code": exc.code, "message": exc.message}}), file=sys.stderr)
        return 2
    doc: dict[str, Any] = asdict(info)
    doc["path"] = str(info.path)
    doc["target_modules"] = list(info.target_modules)
    print(json.dumps(doc, indent=2))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """What `./dir` would register as (rank, targets, base, size, digest, skipped files), or every
    reason it would be refused (exit 2)."""
    from adapters.inspect import inspect_source

    report = inspect_source(
        args.directory,
        base_model=args.base_model,
        base_model_aliases=args.base_model_alias,
        max_rank=args.max_rank,
        supported_modules=args.supported_modules,
        max_bytes=args.max_bytes,
    )
    print(json.dumps(report.view(), indent=2), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 2


def cmd_null(args: argparse.Namespace) -> int:
    from adapters.nulladapter import write_null_adapter

    out = write_null_adapter(args.base, args.out, base_model_id=args.base_model_id)
    print(json.dumps({"out": str(out)}))
    return 0


def register(subparsers: Any) -> None:
    """Add `adapters <build-base|build-tiny|train|null|validate|inspect>` to argparse subparsers."""
    group = subparsers.add_parser("adapters", help="build base models, train and validate LoRAs")
    sub = group.add_subparsers(dest="adapters_command", required=True)

    p = sub.add_parser("build-base", help="build the demo base model (SmolLM2-135M-Instruct)")
    p.add_argument("--out", type=Path, default=Path(".loragate/models/smollm2-135m-instruct"))
    p.add_argument("--cache", type=Path, default=Path(".loragate/cache"))
    p.add_argument("--force", action="store_true", help="rebuild even when complete")
    p.set_defaults(func=cmd_build_base)

    p = sub.add_parser("build-tiny", help="build the tiny test model and random LoRAs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--loras", type=int, default=3)
    p.set_defaults(func=cmd_build_tiny)

    p = sub.add_parser("train", help="train a LoRA on a JSONL chat dataset")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--base", type=Path, default=None, help="base model dir (default: demo base)")
    p.add_argument("--base-model-id", default=None, help="served model id the engines use")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=None, help="default: 2 x rank")
    p.add_argument("--target-modules", type=_csv, default=("q_proj", "k_proj", "v_proj", "o_proj"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace an existing output dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "null", help="write the zero-weight LoRA that adapter-less releases are served through"
    )
    p.add_argument("--base", type=Path, required=True, help="base model dir (its config.json)")
    p.add_argument("--base-model-id", required=True, help="served model id the engines use")
    p.add_argument("--out", type=Path, required=True, help="inside the adapter store")
    p.set_defaults(func=cmd_null)

    p = sub.add_parser("validate", help="validate an artifact as the admin API would")
    p.add_argument("--store", type=Path, required=True, help="adapter store root")
    p.add_argument("path", help="artifact path relative to the store root")
    p.add_argument("--base-model", required=True, help="served base model id")
    p.add_argument("--max-rank", type=int, default=16)
    p.add_argument("--supported-modules", type=_csv, default=_csv(DEFAULT_SUPPORTED_MODULES))
    p.add_argument("--max-bytes", type=int, default=512 * 1024 * 1024)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("inspect", help="what a trainer's output dir would register as, or why not")
    p.add_argument("directory", type=Path)
    p.add_argument("--base-model", default="smollm2-135m-instruct", help="served base model id")
    p.add_argument(
        "--base-model-alias",
        action="append",
        default=["HuggingFaceTB/SmolLM2-135M-Instruct"],
        help="another accepted base name (hub id); repeatable",
    )
    p.add_argument("--max-rank", type=int, default=16)
    p.add_argument("--supported-modules", type=_csv, default=_csv(DEFAULT_SUPPORTED_MODULES))
    p.add_argument("--max-bytes", type=int, default=512 * 1024 * 1024)
    p.set_defaults(func=cmd_inspect)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m adapters.cli adapters ...`) until the console script has it."""
    parser = argparse.ArgumentParser(prog="loragate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
