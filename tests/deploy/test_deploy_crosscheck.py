"""deploy/ agrees with the code: env names are Settings fields, ports and probe paths are the
app's, engine flags are real vLLM 0.32 flags matching the gateway's LoRA limits, metric names exist.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings
from tests.fixtures.manifests import (
    DEPLOY,
    OVERLAYS,
    ROOT,
    Rendered,
    container_env,
    interpolate,
    pod_containers,
)

ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"
ENGINE_MD = DEPLOY / "ENGINE.md"
# The LoRA flags of deploy/ENGINE.md's start command, and the gateway setting each must equal.
LORA_FLAGS = {
    "--max-loras": "LORAGATE_MAX_LORAS",
    "--max-cpu-loras": "LORAGATE_MAX_CPU_LORAS",
    "--max-lora-rank": "LORAGATE_MAX_LORA_RANK",
    "--served-model-name": "LORAGATE_BASE_MODEL",
}
COMPOSE_ENV = {
    "REDIS_PASSWORD": "r",
    "LORAGATE_ADMIN_TOKEN": "a",
    "LORAGATE_KEY_HMAC_SECRET": "k",
    "GRAFANA_ADMIN_PASSWORD": "g",
    "LORAGATE_ENGINE_API_KEY": "e",
    "S3_ACCESS_KEY": "s3a",
    "S3_SECRET_KEY": "s3s",
}
SETTINGS_ENV = {f"LORAGATE_{name.upper()}" for name in Settings.model_fields}


def _compose() -> dict[str, Any]:
    text = interpolate((DEPLOY / "compose.yaml").read_text(), COMPOSE_ENV)
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def _gateway_env(rendered: Rendered, name: str) -> dict[str, str]:
    deployment = rendered.one(name, "Deployment", "loragate-gateway")
    return container_env(rendered, name, deployment["spec"]["template"]["spec"]["containers"][0])


def _engine(rendered: Rendered, name: str) -> tuple[list[str], dict[str, str]]:
    (container,) = rendered.one(name, "StatefulSet", "vllm")["spec"]["template"]["spec"][
        "containers"
    ]
    env = container_env(rendered, name, container)
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in container["args"]]
    return args, env


def _flags(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in args:
        flag, _, value = arg.partition("=")
        out[flag] = value
    return out


def test_every_loragate_name_in_deploy_is_a_settings_field(rendered: Rendered) -> None:
    used: set[str] = set()
    texts = [p.read_text() for p in (DEPLOY / "k8s").rglob("*") if p.is_file()]
    texts += [(DEPLOY / name).read_text() for name in ("compose.yaml", "Dockerfile", "README.md")]
    for text in texts:
        used |= set(re.findall(r"\bLORAGATE_[A-Z0-9_]+", text))
    for name in OVERLAYS:
        for workload in rendered.all(name, "Deployment") + rendered.all(name, "StatefulSet"):
            for container in pod_containers(workload):
                used |= {
                    k for k in container_env(rendered, name, container) if k.startswith("LORAGATE_")
                }
    assert used, "nothing found: the scan is broken"
    # The engines' plugin reads its own names (adapters/vllm_resolver.py documents them).
    plugin = {"LORAGATE_ENGINE_CACHE_DIR", "LORAGATE_ENGINE_CACHE_BYTES"}
    assert all(n in (ROOT / "adapters" / "vllm_resolver.py").read_text() for n in plugin)
    assert used - SETTINGS_ENV - plugin == set()


@pytest.mark.parametrize("name", OVERLAYS)
def test_gateway_config_parses_as_settings(
    rendered: Rendered, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _gateway_env(rendered, name).items():
        if key.startswith("LORAGATE_"):
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.engines
    assert settings.adapter_store == Path("/adapters")


def test_compose_gateway_config_parses_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _compose()["services"]["gateway"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.engines == ["http://vllm:8000"]
    assert settings.redis_url.startswith("redis://:r@redis:6379/")


def test_probe_paths_and_port_are_the_apps() -> None:
    app = create_app(Settings())
    paths = {getattr(route, "path", None) for route in app.routes}
    assert {"/healthz", "/readyz", "/metrics"} <= paths
    assert Settings().port == 8000
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "EXPOSE 8000" in dockerfile
    assert "/healthz" in dockerfile
    compose = _compose()["services"]["gateway"]
    assert "/readyz" in " ".join(compose["healthcheck"]["test"])
    assert compose["ports"][0].endswith(":8000:8000")


@pytest.mark.parametrize("name", OVERLAYS)
def test_engine_lora_flags_match_the_gateway(rendered: Rendered, name: str) -> None:
    args, env = _engine(rendered, name)
    flags = _flags(args)
    gateway = _gateway_env(rendered, name)
    assert "--enable-lora" in flags
    for flag, setting in LORA_FLAGS.items():
        assert flags[flag] == gateway[setting], flag
    assert flags["--port"] == "8000"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # The gateway sends vLLM a `priority` exactly when the engine schedules by it (vLLM refuses
    # one otherwise).
    assert (flags.get("--scheduling-policy") == "priority") == (
        gateway.get("LORAGATE_ENGINE_PRIORITY_SCHEDULING") == "true"
    )
    assert flags.get("--scheduling-policy") == "priority"


def test_compose_engine_lora_flags_match_the_gateway() -> None:
    services = _compose()["services"]
    flags = _flags(services["vllm"]["command"])
    gateway = services["gateway"]["environment"]
    for flag, setting in LORA_FLAGS.items():
        assert flags[flag] == str(gateway[setting]), flag
    assert "--enable-lora" in flags
    assert services["vllm"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert flags["--scheduling-policy"] == "priority"
    assert gateway["LORAGATE_ENGINE_PRIORITY_SCHEDULING"] == "true"


def test_engine_flags_are_the_documented_ones() -> None:
    """The flags of deploy/ENGINE.md's tested start command are the ones we rely on."""
    documented = set(re.findall(r"(--[a-z][a-z-]+)", ENGINE_MD.read_text()))
    assert {"--enable-lora", *LORA_FLAGS, "--max-model-len", "--dtype", "--model"} <= documented


def test_engine_args_parse_with_the_real_vllm(rendered: Rendered) -> None:
    """Every argument list we ship is accepted by vLLM 0.32's own parser (from .venv-engine)."""
    arg_lists = [_engine(rendered, name)[0] for name in OVERLAYS]
    arg_lists.append([str(a) for a in _compose()["services"]["vllm"]["command"]])
    dockerfile = (DEPLOY / "engine-cpu.Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*?\])$", dockerfile.replace("\\\n", ""), re.M | re.S)
    assert cmd
    arg_lists.append(json.loads(cmd[1]))
    script = (
        "import json, sys\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser, "
        "validate_parsed_serve_args\n"
        "for args in json.load(sys.stdin):\n"
        "    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(args)\n"
        "    validate_parsed_serve_args(ns)\n"
        "    assert ns.enable_lora, args\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [str(ENGINE_PYTHON), "-c", script],
        input=json.dumps(arg_lists),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_metric_names_in_deploy_exist() -> None:
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    known: set[str] = set()
    for family in registry.collect():
        base = family.name
        known |= {base, *(f"{base}_{s}" for s in ("total", "bucket", "sum", "count", "info"))}
    rule_names = set()
    for path in (DEPLOY / "prometheus").glob("*_rules.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rule_names |= {r["record"] for r in group["rules"] if "record" in r}
    files = [
        p
        for p in DEPLOY.rglob("*")
        if p.is_file() and p.suffix in {".yml", ".yaml", ".json", ".md"}
    ]
    files.append(DEPLOY / "Dockerfile")
    used: set[str] = set()
    for path in files:
        used |= set(re.findall(r"(?<![\w:.-])loragate_[a-z0-9_]+(?![\w:])", path.read_text()))
    assert used, "nothing found: the scan is broken"
    assert used - known - rule_names == set()
