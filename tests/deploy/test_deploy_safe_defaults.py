"""Safe by default (issue 21): every shipped deployment (the rendered k8s overlays and the compose
file) creates and configures the zero base adapter (adapters/nulladapter.py) and locks its engines
with the engine API key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.nulladapter import write_null_adapter
from gateway.settings import Settings
from tests.fixtures.manifests import DEPLOY, OVERLAYS, Rendered, container_env, interpolate

COMPOSE_ENV = {
    "REDIS_PASSWORD": "r",
    "LORAGATE_ADMIN_TOKEN": "a",
    "LORAGATE_KEY_HMAC_SECRET": "k",
    "GRAFANA_ADMIN_PASSWORD": "g",
    "LORAGATE_ENGINE_API_KEY": "e",
    "S3_ACCESS_KEY": "s3a",
    "S3_SECRET_KEY": "s3s",
}


def _compose(env: dict[str, str] = COMPOSE_ENV) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), env))
    return data


def _validates(tmp_path: Path, config: str, gateway_env: dict[str, str], rel: str) -> None:
    """The zero adapter written from this config passes the gateway's own artifact checks."""
    base = tmp_path / "base-model"
    base.mkdir()
    (base / "config.json").write_text(config)
    store = tmp_path / "adapters"
    settings = Settings(
        base_model=gateway_env["LORAGATE_BASE_MODEL"],
        max_lora_rank=int(gateway_env.get("LORAGATE_MAX_LORA_RANK", "16")),
        adapter_store=store,
    )
    write_null_adapter(base, store / rel, base_model_id=settings.base_model)
    info = settings.validate_artifact(rel)
    assert (info.rank, info.target_modules) == (1, ("q_proj",))


@pytest.mark.parametrize("name", OVERLAYS)
def test_k8s_overlays_create_and_configure_the_zero_adapter(
    rendered: Rendered, name: str, tmp_path: Path
) -> None:
    spec = rendered.one(name, "Deployment", "loragate-gateway")["spec"]["template"]["spec"]
    gateway = container_env(rendered, name, spec["containers"][0])
    rel = gateway["LORAGATE_BASE_ADAPTER"]
    assert rel, "the zero adapter is the default; turning it off is an explicit choice"
    (init,) = [c for c in spec["initContainers"] if c["name"] == "base-adapter"]
    assert init["image"] == spec["containers"][0]["image"]
    env = container_env(rendered, name, init)
    assert (env["LORAGATE_BASE_ADAPTER"], env["LORAGATE_BASE_MODEL"]) == (
        rel,
        gateway["LORAGATE_BASE_MODEL"],
    )
    (script,) = init["args"]
    assert script.startswith('[ -z "$LORAGATE_BASE_ADAPTER" ] || exec loragate adapters null ')
    assert '--out "/adapters/$LORAGATE_BASE_ADAPTER"' in script
    assert gateway["LORAGATE_ADAPTER_STORE"] == "/adapters"
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert not mounts["/adapters"].get("readOnly", False)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/adapters"]["name"]]  # this pod's own store
    config_map = volumes[mounts["/base-model"]["name"]]["configMap"]["name"]
    config = rendered.one(name, "ConfigMap", config_map)["data"]["config.json"]
    _validates(tmp_path, config, gateway, rel)


def test_the_zero_adapter_never_replaces_a_directory_of_adapters(tmp_path: Path) -> None:
    """A mistaken --out (the store root) must not take every tenant's adapters with it."""
    base = tmp_path / "base-model"
    base.mkdir()
    (base / "config.json").write_text((DEPLOY / "k8s/base/base-model-config.json").read_text())
    store = tmp_path / "adapters"
    (store / "acme" / "lora-v1").mkdir(parents=True)
    with pytest.raises(ValueError, match="more than a zero adapter"):
        write_null_adapter(base, store, base_model_id="m")
    assert (store / "acme" / "lora-v1").is_dir()
    out = write_null_adapter(base, store / "base" / "null", base_model_id="m")
    again = write_null_adapter(base, out, base_model_id="m")  # idempotent
    assert again == out


def test_cpu_dev_zero_adapter_has_the_baked_models_shape(rendered: Rendered) -> None:
    config = json.loads(
        rendered.config_map("cpu-dev", "loragate-base-model")["data"]["config.json"]
    )
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)  # SmolLM2-135M


def test_compose_creates_and_configures_the_zero_adapter(tmp_path: Path) -> None:
    services = _compose()["services"]
    gateway = {k: str(v) for k, v in services["gateway"]["environment"].items()}
    rel = gateway["LORAGATE_BASE_ADAPTER"]
    assert rel
    job = services["base-adapter"]
    assert services["gateway"]["depends_on"]["base-adapter"]["condition"] == (
        "service_completed_successfully"
    )
    assert job["environment"]["LORAGATE_BASE_ADAPTER"] == rel
    assert job["environment"]["LORAGATE_BASE_MODEL"] == gateway["LORAGATE_BASE_MODEL"]
    script = job["command"][0]
    assert "loragate adapters null" in script
    assert '--out "/adapters/$LORAGATE_BASE_ADAPTER"' in script
    assert mounts_source(job, "/adapters") == mounts_source(services["gateway"], "/adapters")
    config = (DEPLOY / mounts_source(job, "/base-model/config.json")).read_text()
    _validates(tmp_path, config, gateway, rel)
    cpu = DEPLOY / "k8s/overlays/cpu-dev/base-model-config.json"
    assert f"BASE_MODEL_CONFIG=./{cpu.relative_to(DEPLOY)}" in (DEPLOY / "README.md").read_text()


def test_compose_turns_the_zero_adapter_off_only_when_told() -> None:
    services = _compose({**COMPOSE_ENV, "LORAGATE_BASE_ADAPTER": ""})["services"]
    assert services["gateway"]["environment"]["LORAGATE_BASE_ADAPTER"] == ""


def mounts_source(service: dict[str, Any], target: str) -> str:
    for volume in service["volumes"]:
        source, rest = volume.split(":", 1)
        if rest.split(":")[0] == target:
            return str(source)
    raise AssertionError(f"nothing mounted at {target}")


@pytest.mark.parametrize("name", OVERLAYS)
def test_k8s_engines_and_gateway_share_the_engine_api_key(rendered: Rendered, name: str) -> None:
    spec = rendered.one(name, "Deployment", "loragate-gateway")["spec"]["template"]["spec"]
    gateway = container_env(rendered, name, spec["containers"][0])
    vllm = rendered.one(name, "StatefulSet", "vllm")["spec"]["template"]["spec"]["containers"][0]
    engine = container_env(rendered, name, vllm)
    assert gateway["LORAGATE_ENGINE_API_KEY"] == engine["VLLM_API_KEY"] == "secret-engine-api-key"


def test_compose_engines_and_gateway_share_the_engine_api_key() -> None:
    services = _compose()["services"]
    key = services["gateway"]["environment"]["LORAGATE_ENGINE_API_KEY"]
    assert key == "e"
    for engine in ("vllm", "vllm-cpu"):
        assert services[engine]["environment"]["VLLM_API_KEY"] == key
    text = (DEPLOY / "compose.yaml").read_text()
    assert re.search(r"LORAGATE_ENGINE_API_KEY:\?", text), "compose refuses to start without it"
