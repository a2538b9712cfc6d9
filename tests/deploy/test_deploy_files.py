"""compose.yaml, the Dockerfiles and every YAML file under deploy/ pass offline validation.

compose.yaml is validated by compose-spec (the compose_spec Rust crate) after interpolation, its
Prometheus config by promtool, the Dockerfiles by hadolint, YAML by yamllint.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose
from yamllint import linter  # type: ignore[import-untyped]
from yamllint.config import YamlLintConfig  # type: ignore[import-untyped]

from tests.fixtures.manifests import DEPLOY, ROOT, MissingVariable, Rendered, interpolate

REQUIRED_ENV = {
    "REDIS_PASSWORD": "r",
    "LORAGATE_ADMIN_TOKEN": "a",
    "LORAGATE_KEY_HMAC_SECRET": "k",
    "GRAFANA_ADMIN_PASSWORD": "g",
    "LORAGATE_ENGINE_API_KEY": "e",
    "S3_ACCESS_KEY": "s3a",
    "S3_SECRET_KEY": "s3s",
}
YAMLLINT = YamlLintConfig(
    "extends: default\n"
    "rules:\n"
    "  document-start: disable\n"
    "  line-length: {max: 120}\n"
    "  comments: {min-spaces-from-content: 1}\n"
    "  truthy: {check-keys: false}\n"
)


def _compose(env: dict[str, str] = REQUIRED_ENV) -> dict[str, Any]:
    text = interpolate((DEPLOY / "compose.yaml").read_text(), env)
    PyCompose.from_yaml(text)  # raises ValueError on anything the compose spec rejects
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def _yaml_files() -> list[Path]:
    mine = [DEPLOY / "compose.yaml", DEPLOY / "kustomization.yaml"]
    generated = {"prometheusrule.yaml"}  # deploy/prometheus/operator.py: the rule files' lines
    return mine + sorted(p for p in (DEPLOY / "k8s").rglob("*.yaml") if p.name not in generated)


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_is_lint_clean(path: Path) -> None:
    problems = list(linter.run(path.read_text(), YAMLLINT, str(path)))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column} {p.message}" for p in problems)


def test_compose_is_valid_and_complete() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "gateway", "base-adapter", "vllm", "vllm-cpu", "redis", "prometheus", "alertmanager",
        "grafana", "objectstore", "objectstore-bucket",
    }  # fmt: skip
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        image = service["image"]
        exact = r":v?\d+\.\d+\.\d+$|:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ$"  # MinIO's
        assert re.search(exact, image), f"{name}: exact tag wanted, got {image}"


def test_compose_refuses_to_start_without_secrets() -> None:
    for missing in REQUIRED_ENV:
        env = {k: v for k, v in REQUIRED_ENV.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            _compose(env)


def test_compose_keeps_engines_and_redis_private() -> None:
    data = _compose()
    services, networks = data["services"], data["networks"]
    for name in ("vllm", "vllm-cpu", "redis"):
        assert "ports" not in services[name]
    # Prometheus reaches the engines for /metrics; their /v1 routes need the engine API key.
    # The engines also reach the object store (their plugin fetches adapters), nothing else there.
    store = {"objectstore", "objectstore-bucket"}
    layout: list[tuple[set[str], str, set[str], set[str]]] = [
        ({"vllm", "vllm-cpu"}, "engines", {"gateway", "prometheus"}, store),
        ({"redis"}, "data", {"gateway"}, set()),
        (store, "objects", {"gateway", "vllm", "vllm-cpu"}, set()),
    ]
    for private, owner, peers, reached in layout:
        assert networks[owner]["internal"] is True
        sharing = {n for n, s in services.items() if owner in s.get("networks", [])}
        assert sharing == private | peers, f"{owner} network: {sharing}"
        for name in private:
            for network in services[name]["networks"]:
                others = {n for n, s in services.items() if network in s.get("networks", [])}
                assert others <= private | peers | reached, f"{name} reachable via {network}"
    assert services["base-adapter"]["network_mode"] == "none"
    for service in ("prometheus", "alertmanager", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[service]["ports"])


def test_compose_redis_is_durable_and_never_evicts() -> None:
    command = _compose()["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"


def test_compose_mounts_the_monitoring_files_that_exist() -> None:
    data = _compose()
    for name in ("prometheus", "grafana"):
        for volume in data["services"][name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    rule_mounts = {v.split(":")[0] for v in data["services"]["prometheus"]["volumes"]}
    for rules in (DEPLOY / "prometheus").glob("*_rules.yml"):
        assert f"./prometheus/{rules.name}" in rule_mounts
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/loragate.yml").read_text())
    dashboards_at = provider["providers"][0]["options"]["path"]
    grafana = data["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{dashboards_at}:ro" in grafana
    ours = yaml.safe_load(data["configs"]["grafana-datasource"]["content"])["datasources"][0]
    theirs = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/loragate.yml").read_text())
    assert ours["uid"] == theirs["datasources"][0]["uid"]
    assert ours["url"] == "http://prometheus:9090"


def test_compose_prometheus_config_loads(tmp_path: Path) -> None:
    """promtool checks the inline config with the real rule files; it scrapes the gateway."""
    data = _compose()
    config = data["configs"]["prometheus-config"]["content"]
    parsed = yaml.safe_load(config)
    assert parsed["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:8000"]
    for volume in data["services"]["prometheus"]["volumes"]:
        source, _, target = volume.partition(":")
        if source.startswith("./"):
            config = config.replace(target.rsplit(":", 1)[0], str(DEPLOY / source))
    (tmp_path / "prometheus.yml").write_text(config)
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make sysdeps` installs the Debian prometheus package"
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["Dockerfile", "engine-cpu.Dockerfile"])
def test_dockerfile_lints_clean(name: str) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", str(DEPLOY / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / name).read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user
    assert user[-1].split(":")[0] not in ("0", "root")
    ignore = (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if not line.startswith("#"))] == "*"


def test_gpu_engine_image_is_the_official_one_plus_the_plugin() -> None:
    """deploy/engine-gpu.Dockerfile: vLLM's own image at an exact tag (its user and pins kept),
    loragate installed without dependencies, boto3 pinned as in pyproject."""
    name = "engine-gpu.Dockerfile"
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", str(DEPLOY / name)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / name).read_text()
    assert re.search(r"^FROM vllm/vllm-openai:v\d+\.\d+\.\d+$", text, re.M)
    assert "pip install --no-deps ." in text
    pin = re.search(r'"(boto3==[^"]+)"', (DEPLOY.parent / "pyproject.toml").read_text())
    assert pin is not None
    assert pin[1] in text
    ignore = (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if not line.startswith("#"))] == "*"


def test_gateway_image_installs_serving_deps_only() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n\\&]+)", text)
    assert installs == ["-r requirements.txt", "--no-deps . "]
    assert "['project']['dependencies']" in text
    assert "[train" not in text
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    heavy = {"torch", "transformers", "peft", "safetensors", "gguf", "tokenizers"}
    assert not {re.split(r"[\[=<>~ ]", d)[0].lower() for d in deps} & heavy


def test_readme_documents_every_secret_key(rendered: Rendered) -> None:
    readme = (DEPLOY / "README.md").read_text()
    keys: set[tuple[str, str]] = set()
    for name in ("gpu", "cpu-dev"):
        for obj in rendered.all(name, "Deployment") + rendered.all(name, "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for item in container.get("env", []):
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        keys.add((ref["name"], ref["key"]))
    assert keys
    for secret, key in keys:
        assert f"generic {secret}" in readme, secret
        assert f"--from-literal={key}=" in readme, key
    for variable in REQUIRED_ENV:
        assert f"{variable}=" in readme, variable


def test_compose_shares_no_adapter_directory_between_gateway_and_engines() -> None:
    """Adapters reach the engine through the object store only: the gateway's store and the
    engine's cache are different volumes, and both know the same bucket."""
    services = _compose()["services"]
    gateway = services["gateway"]
    gateway_sources = {v.split(":", 1)[0] for v in gateway["volumes"]}
    for name in ("vllm", "vllm-cpu"):
        engine = services[name]
        sources = {v.split(":", 1)[0] for v in engine["volumes"]}
        assert not (sources & gateway_sources), name
        env = {k: str(v) for k, v in engine["environment"].items()}
        assert env["LORAGATE_ENGINE_CACHE_DIR"] == "/adapters"
        for key in ("LORAGATE_S3_ENDPOINT_URL", "LORAGATE_S3_BUCKET", "AWS_ACCESS_KEY_ID"):
            assert env[key] == str(gateway["environment"][key]), (name, key)
        assert "objects" in engine["networks"]
    assert gateway["environment"]["LORAGATE_ENGINE_ADAPTER_ROOT"] == "/adapters"
