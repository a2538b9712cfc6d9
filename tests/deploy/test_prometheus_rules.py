"""deploy/prometheus: promtool check and unit tests; rules use only metrics the gateway exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from deploy.grafana.queries import VLLM_METRICS, metric_names
from gateway.observability.metrics import GatewayMetrics
from tests.fixtures.prometheus import exported_names

PROM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULE_FILES = ["recording_rules.yml", "alert_rules.yml"]
TEST_FILES = ["tests.yml", "tests_weekly.yml"]


def promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not installed: run `make test` (it installs prometheus)")
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def load_rules(name: str) -> list[dict[str, str]]:
    doc = yaml.safe_load((PROM_DIR / name).read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_check_rules_and_config() -> None:
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *TEST_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("SUCCESS") == len(TEST_FILES)


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a canary guard that never trips makes them fail."""
    for name in [*RULE_FILES, *TEST_FILES]:
        shutil.copy(PROM_DIR / name, tmp_path / name)
    alerts = tmp_path / "alert_rules.yml"
    text = alerts.read_text()
    broken = text.replace(
        "> on (tenant, model) 2 * tenant_model_arm", "> on (tenant, model) 200 * tenant_model_arm"
    )
    assert broken != text
    alerts.write_text(broken)
    result = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "LoragateCanaryLatencyWorse" in result.stdout + result.stderr


def test_required_alerts_exist_and_are_tested() -> None:
    alerts = {rule["alert"] for rule in load_rules("alert_rules.yml")}
    required = {
        "LoragateLatencyP95Regression", "LoragateLatencyP95OverSLO", "LoragateHighErrorRate",
        "LoragateCanaryLatencyWorse", "LoragateCanaryErrorRateWorse",
        "LoragateBudgetBurnRateHigh", "LoragateRedisUnreachable", "LoragateNoHealthyEngine",
        "LoragateRegistrySnapshotStale", "LoragateTenantStarved",
    }  # fmt: skip
    assert required <= alerts
    tested = set()
    for name in TEST_FILES:
        tested |= set(re.findall(r"alertname: (\w+)", (PROM_DIR / name).read_text()))
    assert required <= tested


def test_every_alert_has_a_promtool_test_and_a_runbook_section() -> None:
    """An alert nobody tested or documented is one nobody can trust at 3 a.m."""
    alerts = load_rules("alert_rules.yml")
    tested: set[str] = set()
    for name in TEST_FILES:
        tested |= set(re.findall(r"alertname: (\w+)", (PROM_DIR / name).read_text()))
    untested = sorted(
        str(rule["alert"]) for rule in alerts if "alert" in rule and rule["alert"] not in tested
    )
    assert untested == []
    runbook = (PROM_DIR.parent / "RUNBOOK.md").read_text()
    sections = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    for rule in alerts:
        if "alert" not in rule:
            continue
        annotations: Any = rule.get("annotations", {})
        url = str(annotations.get("runbook_url", ""))
        assert url.endswith("/deploy/RUNBOOK.md#" + rule["alert"].lower()), rule["alert"]
        assert rule["alert"].lower() in sections, f"no runbook section for {rule['alert']}"


def test_rules_reference_only_exported_metrics() -> None:
    exported = exported_names(GatewayMetrics(CollectorRegistry()).registry) | {"up"} | VLLM_METRICS
    recorded: set[str] = set()
    for name in RULE_FILES:
        for rule in load_rules(name):
            assert metric_names(rule["expr"]) <= exported | recorded, rule
            if "record" in rule:
                recorded.add(rule["record"])
    contract = {
        f"tenant_model_release_arm:loragate_{m}:{q}_5m"
        for m in ("request_duration_seconds", "time_to_first_token_seconds")
        for q in ("p50", "p95")
    }
    assert contract <= recorded
