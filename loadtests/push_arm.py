"""Push time of a large adapter over loopback: the CLI's steps (pack, digest, streamed upload)
into a gateway process whose object store is a real S3 protocol server (moto), all on 127.0.0.1.

    python -m loadtests.push_arm --mb 50      # one line per push, and a JSON summary

The adapter is a valid PEFT artifact of about `mb` MB (rank 16, q/v projections of a model with
hidden size 4096, random fp16 bytes: nothing compresses), written offline with the standard
library. The split comes from the gateway's `server-timing` header (gateway/admin/adapter_push.py):
receive (body to disk), validate (unpack, checks, digest), objectstore (copy to S3), registry.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.artifact import compute_digest
from adapters.ports import free_port
from adapters.push import pack
from gateway.admin import client as api
from gateway.admin.client import AdminClient
from gateway.admin.push_cli import _file_chunks
from loadtests import stack
from loadtests.procs import Proc

HIDDEN = 4096
RANK = 16
MODULES = ("q_proj", "v_proj")


def write_large_lora(out: Path, *, mb: float, base_model: str) -> Path:
    """A valid rank-16 LoRA of about `mb` MB (1 MB = 10**6 bytes) with random weights."""
    per_layer = len(MODULES) * 2 * RANK * HIDDEN * 2  # A and B, fp16
    layers = max(1, round(mb * 1e6 / per_layer))
    header: dict[str, Any] = {}
    offset = 0
    for layer in range(layers):
        for module in MODULES:
            for ab, shape in (("A", [RANK, HIDDEN]), ("B", [HIDDEN, RANK])):
                name = f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{ab}.weight"
                size = shape[0] * shape[1] * 2
                header[name] = {
                    "dtype": "F16",
                    "shape": shape,
                    "data_offsets": [offset, offset + size],
                }
                offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "adapter_model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = offset
        while left:
            chunk = min(left, 1 << 22)
            f.write(os.urandom(chunk))
            left -= chunk
    config = {
        "peft_type": "LORA", "base_model_name_or_path": base_model, "r": RANK,
        "lora_alpha": 2 * RANK, "target_modules": list(MODULES), "task_type": "CAUSAL_LM",
    }  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def _start_moto(work: Path) -> tuple[Proc, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    proc = Proc.start("moto", cmd, log_dir=work / "logs", env=env)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/moto-api/", timeout=60)
    return proc, url


def _timings(header: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur) / 1000
    return out


def run(work: Path, *, mb: float = 50.0, pushes: int = 3) -> dict[str, Any]:
    """Push `pushes` distinct adapters of about `mb` MB; the per-push rows and the median."""
    import boto3

    work.mkdir(parents=True, exist_ok=True)
    services: list[Proc] = []
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    try:
        redis = stack.start_redis(work, cpu=None)
        services.append(redis.proc)
        moto, s3_url = _start_moto(work)
        services.append(moto)
        bucket = "lg-bench-" + secrets.token_hex(4)
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
        s3.create_bucket(Bucket=bucket)
        s3.close()
        mock = stack.start_mock(work, ports=[free_port()], cpu=None, chunks=4, interval_ms=1)
        services.append(mock.proc)  # readiness needs an engine; the push never reaches it
        gw = stack.start_loragate(
            work, redis_url=redis.url, engines=[mock.url], cpu=None,
            settings={"LORAGATE_S3_BUCKET": bucket, "LORAGATE_S3_ENDPOINT_URL": s3_url,
                      "LORAGATE_MAX_LORA_RANK": str(RANK)},
            extra_env=aws,
        )  # fmt: skip
        services.append(gw.proc)
        rows = []
        with AdminClient(gw.url, gw.admin_token) as client:
            client.send(api.create_tenant("bench"))
            for n in range(pushes):
                source = write_large_lora(work / f"lora-{n}", mb=mb, base_model=stack.BASE_MODEL)
                size = sum(p.stat().st_size for p in source.iterdir())
                with tempfile.TemporaryDirectory(dir=work) as tmp:
                    t0 = time.perf_counter()
                    tar_path, _ = pack(source, Path(tmp) / "a.tar")
                    digest = compute_digest(source)
                    t1 = time.perf_counter()
                    call = api.upload_adapter(
                        "bench", "big", _file_chunks(tar_path), size=tar_path.stat().st_size,
                        digest=digest,
                    )  # fmt: skip
                    response = client.http.request(
                        "POST", call.path, content=call.content, headers=call.headers
                    )
                    t2 = time.perf_counter()
                api.answer(response)
                split = _timings(response.headers.get("server-timing", ""))
                rows.append({
                    "bytes": size, "client_pack_digest_s": t1 - t0, "upload_s": t2 - t1,
                    "total_s": t2 - t0, "mb_per_s": size / 1e6 / (t2 - t0), **split,
                })  # fmt: skip
                print(_line(rows[-1]), flush=True)
    finally:
        for proc in reversed(services):
            proc.stop()
    median = sorted(rows, key=lambda r: r["total_s"])[len(rows) // 2]
    return {"rows": rows, "median": median, "line": "push arm (median): " + _line(median)}


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['bytes'] / 1e6:.1f} MB in {row['total_s']:.2f} s ({row['mb_per_s']:.1f} MB/s): "
        f"client pack+digest {row['client_pack_digest_s']:.2f} s, "
        f"gateway receive {row.get('receive', 0):.2f} s + validate {row.get('validate', 0):.2f} s,"
        f" object store copy {row.get('objectstore', 0):.2f} s, "
        f"registry {row.get('registry', 0):.3f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--pushes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loragate-push-") as tmp:
        result = run(Path(tmp), mb=args.mb, pushes=args.pushes)
    print(result["line"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
