"""Kustomize overlays render, validate against the Kubernetes 1.37 schemas, and hold together.

All offline: kubectl (kustomize) and kubernetes-validate come from the dev extra.
"""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from deploy.prometheus.operator import OUT, RULE_FILES, render
from tests.fixtures.manifests import (
    DEPLOY,
    KUSTOMIZATIONS,
    OVERLAYS,
    Rendered,
    container_env,
    pod_containers,
)

K8S_VERSION = "1.37.0"
# Kinds from CRDs: kubernetes-validate has no schema for them; checked by hand below.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
# Secrets the operator creates (deploy/README.md); their values are never in git.
DOCUMENTED_SECRETS = {
    "loragate-secrets": {"admin-token", "key-hmac-secret", "redis-password", "engine-api-key"},
    "loragate-hf": {"token"},
    "loragate-s3": {"access-key-id", "secret-access-key"},
}


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_object_is_valid_for_kubernetes(rendered: Rendered, name: str) -> None:
    objects = rendered.objects(name)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {e.message} at {e.path}")


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_has_the_whole_stack(rendered: Rendered, name: str) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects(name)}
    for expected in [
        ("Namespace", "loragate"),
        ("Deployment", "loragate-gateway"),
        ("Service", "loragate-gateway"),
        ("HorizontalPodAutoscaler", "loragate-gateway"),
        ("PodDisruptionBudget", "loragate-gateway"),
        ("PodDisruptionBudget", "vllm"),
        ("StatefulSet", "vllm"),
        ("Service", "vllm"),
        ("NetworkPolicy", "vllm-only-from-gateway"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("NetworkPolicy", "redis-only-from-gateway"),
    ]:
        assert expected in kinds, f"{name} lacks {expected}"
    assert not rendered.all(name, "Secret"), "secret values must not be committed"
    namespaced = [o for o in rendered.objects(name) if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"loragate"}


def test_gateway_deployment_is_production_shaped(rendered: Rendered) -> None:
    deployment = rendered.one("gpu", "Deployment", "loragate-gateway")
    spec = deployment["spec"]
    assert "replicas" not in spec, "the HPA owns the gateway count"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = _port(container, container["readinessProbe"]["httpGet"]["port"])
    assert annotations["prometheus.io/port"] == str(port)
    env = container_env(rendered, "gpu", container)
    assert int(env["LORAGATE_PORT"]) == port
    assert env["LORAGATE_HOST"] == "0.0.0.0"
    # Streams drain within the grace period.
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > float(env["LORAGATE_ENGINE_READ_TIMEOUT_S"])


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_container_has_resources_and_probes(rendered: Rendered, name: str) -> None:
    for kind in ("Deployment", "StatefulSet"):
        for workload in rendered.all(name, kind):
            init = {
                c["name"] for c in workload["spec"]["template"]["spec"].get("initContainers", [])
            }
            for container in pod_containers(workload):
                where = f"{name} {kind}/{workload['metadata']['name']}/{container['name']}"
                assert container["resources"]["requests"], where
                assert container["resources"]["limits"]["memory"], where
                if container["name"] not in init:  # init containers run to completion, unprobed
                    assert "readinessProbe" in container, where
                    assert "livenessProbe" in container, where
                assert not container["image"].endswith(":latest"), where
                assert ":" in container["image"], where


@pytest.mark.parametrize("name", OVERLAYS)
def test_references_resolve(rendered: Rendered, name: str) -> None:
    objects = rendered.objects(name)
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for workload in [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]:
        pod = workload["spec"]["template"]["spec"]
        templates = {
            t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
        }
        volumes = {v["name"] for v in pod.get("volumes", [])} | templates
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in pod_containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, mount
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for item in container.get("env", []):
                ref = item.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    cm = next(
                        o
                        for o in objects
                        if o["metadata"]["name"] == ref["configMapKeyRef"]["name"]
                    )
                    assert ref["configMapKeyRef"]["key"] in cm["data"]
                if "secretKeyRef" in ref:
                    secret = ref["secretKeyRef"]
                    assert secret["key"] in DOCUMENTED_SECRETS[secret["name"]]


@pytest.mark.parametrize("name", OVERLAYS)
def test_selectors_match_their_pods(rendered: Rendered, name: str) -> None:
    workloads = {
        (o["kind"], o["metadata"]["name"]): o
        for o in rendered.objects(name)
        if o["kind"] in ("Deployment", "StatefulSet")
    }
    pod_labels = {k: w["spec"]["template"]["metadata"]["labels"] for k, w in workloads.items()}
    for w in workloads.values():
        assert _matches(
            w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]
        )
    for service in rendered.all(name, "Service"):
        selected = [
            k for k, labels in pod_labels.items() if _matches(service["spec"]["selector"], labels)
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        workload = workloads[selected[0]]
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert any(_port(c, target) for c in pod_containers(workload))
    pdbs = {o["metadata"]["name"]: o for o in rendered.all(name, "PodDisruptionBudget")}
    for pdb_name, workload_key in [
        ("loragate-gateway", ("Deployment", "loragate-gateway")),
        ("vllm", ("StatefulSet", "vllm")),
    ]:
        selector = pdbs[pdb_name]["spec"]["selector"]["matchLabels"]
        assert [k for k, labels in pod_labels.items() if _matches(selector, labels)] == [
            workload_key
        ]
        assert pdbs[pdb_name]["spec"]["maxUnavailable"] == 1
    hpa = rendered.one(name, "HorizontalPodAutoscaler", "loragate-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) in workloads


@pytest.mark.parametrize("name", OVERLAYS)
def test_engines_only_reachable_from_the_gateway(rendered: Rendered, name: str) -> None:
    gateway = rendered.one(name, "Deployment", "loragate-gateway")["spec"]["template"]["metadata"][
        "labels"
    ]
    for policy_name, target, port in [
        ("vllm-only-from-gateway", ("StatefulSet", "vllm"), 8000),
        ("redis-only-from-gateway", ("StatefulSet", "redis"), 6379),
    ]:
        policy = rendered.one(name, "NetworkPolicy", policy_name)["spec"]
        selected = rendered.one(name, *target)["spec"]["template"]["metadata"]["labels"]
        assert _matches(policy["podSelector"]["matchLabels"], selected)
        assert "Ingress" in policy["policyTypes"]
        (rule,) = policy["ingress"]
        (source,) = rule["from"]
        assert set(source) == {"podSelector"}, "no namespaceSelector/ipBlock: gateway pods only"
        assert _matches(source["podSelector"]["matchLabels"], gateway)
        assert [p["port"] for p in rule["ports"]] == [port]


@pytest.mark.parametrize("name", OVERLAYS)
def test_gateways_discover_the_engines_through_the_headless_service(
    rendered: Rendered, name: str
) -> None:
    """LORAGATE_ENGINES is the SRV name of the vLLM headless Service's port: no hand-kept list of
    pods, and no namespace in any URL (short names resolve within the pod's namespace)."""
    sts = rendered.one(name, "StatefulSet", "vllm")
    service = rendered.one(name, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    namespace = sts["metadata"]["namespace"]
    (port,) = service["spec"]["ports"]
    gateway = rendered.one(name, "Deployment", "loragate-gateway")
    assert "replicas" not in gateway["spec"], "the HPA owns the gateway count"
    env = container_env(rendered, name, gateway["spec"]["template"]["spec"]["containers"][0])
    expected = f"dns://_{port['name']}._{port['protocol'].lower()}.{service['metadata']['name']}"
    assert json.loads(env["LORAGATE_ENGINES"]) == [expected]
    assert float(env["LORAGATE_ENGINE_DISCOVERY_INTERVAL_S"]) > 0
    redis = rendered.one(name, "StatefulSet", "redis")
    assert f"@redis-0.{redis['spec']['serviceName']}:6379/" in env["LORAGATE_REDIS_URL"]
    for key, value in env.items():
        if key.startswith("LORAGATE_"):
            assert f".{namespace}." not in value, key
            assert ".svc" not in value, key


@pytest.mark.parametrize("name", OVERLAYS)
def test_redis_is_durable_and_never_evicts(rendered: Rendered, name: str) -> None:
    conf = rendered.config_map(name, "loragate-redis")["data"]["redis.conf"]
    directives = dict(
        line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    sts = rendered.one(name, "StatefulSet", "redis")
    (template,) = sts["spec"]["volumeClaimTemplates"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[template["metadata"]["name"]] == directives["dir"]
    assert "--requirepass" in container["args"]


def test_cpu_dev_runs_one_small_cpu_engine(rendered: Rendered) -> None:
    sts = rendered.one("cpu-dev", "StatefulSet", "vllm")
    assert sts["spec"]["replicas"] == 1
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "loragate/vllm-cpu:0.32.0"
    assert not any("nvidia.com/gpu" in r for r in container["resources"].values())
    env = container_env(rendered, "cpu-dev", container)
    assert env["VLLM_MODEL"] == "/models/smollm2-135m-instruct"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_gpu_engines_get_a_gpu_each(rendered: Rendered) -> None:
    sts = rendered.one("gpu", "StatefulSet", "vllm")
    assert sts["spec"]["replicas"] >= 2
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("loragate/vllm:")  # vllm/vllm-openai + the plugin
    dockerfile = (DEPLOY / "engine-gpu.Dockerfile").read_text()
    assert f"FROM vllm/vllm-openai:v{container['image'].rsplit(':', 1)[1]}" in dockerfile
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_service_monitor_scrapes_the_gateway_service(rendered: Rendered) -> None:
    assert not [o for o in rendered.objects("gpu") if o["kind"] == "ServiceMonitor"]
    (monitor,) = rendered.all("gpu-monitoring", "ServiceMonitor")
    service = rendered.one("gpu-monitoring", "Service", "loragate-gateway")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"


def test_monitoring_config_maps_carry_the_rule_files_verbatim(rendered: Rendered) -> None:
    rules = rendered.one("monitoring", "ConfigMap", "loragate-prometheus-rules")["data"]
    expected = sorted(p.name for p in (DEPLOY / "prometheus").glob("*_rules.yml"))
    assert sorted(rules) == expected
    for file_name, content in rules.items():
        assert content == (DEPLOY / "prometheus" / file_name).read_text()


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _port(container: dict[str, Any], ref: int | str) -> int | None:
    for port in container.get("ports", []):
        if ref in (port.get("name"), port["containerPort"]):
            return int(port["containerPort"])
    return None


def test_image_tags_are_exact(rendered: Rendered) -> None:
    for name in OVERLAYS:
        for workload in rendered.all(name, "Deployment") + rendered.all(name, "StatefulSet"):
            for container in pod_containers(workload):
                assert re.search(r":v?\d+\.\d+\.\d+$|@sha256:[0-9a-f]{64}$", container["image"])


def test_prometheus_rule_carries_every_rule_file_group(rendered: Rendered) -> None:
    """The Operator's PrometheusRule is generated from the rule files and never drifts."""
    assert OUT.read_text() == render(), "run `python deploy/prometheus/operator.py`"
    (rule,) = rendered.all("gpu-monitoring", "PrometheusRule")
    groups = []
    for name in RULE_FILES:
        groups += yaml.safe_load((DEPLOY / "prometheus" / name).read_text())["groups"]
    assert rule["spec"]["groups"] == groups


def test_engines_are_scraped_where_the_operator_runs(rendered: Rendered) -> None:
    (monitor,) = rendered.all("gpu-monitoring", "PodMonitor")
    vllm = rendered.one("gpu-monitoring", "StatefulSet", "vllm")["spec"]["template"]
    assert _matches(monitor["spec"]["selector"]["matchLabels"], vllm["metadata"]["labels"])
    ports = {p["name"] for p in vllm["spec"]["containers"][0]["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
    for name in OVERLAYS:  # annotation-based discovery everywhere, and the policy lets it in
        annotations = rendered.one(name, "StatefulSet", "vllm")["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert annotations["prometheus.io/scrape"] == "true"
        policy = rendered.one(name, "NetworkPolicy", "vllm-metrics-from-monitoring")["spec"]
        assert [p["port"] for p in policy["ingress"][0]["ports"]] == [8000]


def test_dashboards_config_map_is_in_grafanas_namespace(rendered: Rendered) -> None:
    """The Grafana sidecar searches its own namespace by default (kube-prometheus-stack)."""
    dashboards = rendered.one("monitoring", "ConfigMap", "loragate-grafana-dashboards")
    assert dashboards["metadata"]["namespace"] == "monitoring"
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(dashboards["data"]) == sorted(
        p.name for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")
    )


@pytest.mark.parametrize("name", OVERLAYS)
def test_no_volume_is_shared_and_engines_fetch_from_the_bucket(
    rendered: Rendered, name: str
) -> None:
    """No ReadWriteMany, no PersistentVolumeClaim outside Redis's own: gateways and engines each
    keep adapters in an emptyDir; the engines' plugin reads the gateways' object store settings."""
    objects = rendered.objects(name)
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert "ReadWriteMany" not in json.dumps(objects)
    gateway = rendered.one(name, "Deployment", "loragate-gateway")["spec"]["template"]["spec"]
    engine = rendered.one(name, "StatefulSet", "vllm")["spec"]["template"]["spec"]
    for pod in (gateway, engine):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [
            m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/adapters"
        ]
        assert "emptyDir" in volumes[mount["name"]]
        assert not mount.get("readOnly", False)
    gateway_env = container_env(rendered, name, gateway["containers"][0])
    engine_env = container_env(rendered, name, engine["containers"][0])
    assert engine_env["LORAGATE_ENGINE_CACHE_DIR"] == gateway_env["LORAGATE_ENGINE_ADAPTER_ROOT"]
    assert gateway_env["LORAGATE_S3_BUCKET"]
    for key in ("LORAGATE_S3_ENDPOINT_URL", "LORAGATE_S3_BUCKET", "LORAGATE_S3_PREFIX",
                "LORAGATE_S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # fmt: skip
        assert engine_env[key] == gateway_env[key], key
    (init,) = engine["initContainers"]
    assert init["name"] == "base-adapter"
    assert init["args"] == gateway["initContainers"][0]["args"]  # the same zero adapter bytes
