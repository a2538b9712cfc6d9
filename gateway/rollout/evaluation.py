"""Eval-gated promotion: a release's evaluation set, run against that release before it serves all.

Why it does not go through the tenant API: the gateway must be able to evaluate a canary at weight
0 without a tenant key, and routing must not decide which arm answers. It does go through the
tenant path's own parts: the release is rendered by `gateway.serving.chat.render_release` and sent
by `gateway.serving.relay.open_engine` / `read_answer`, so the gate sees what tenants are served
(system prompt, params, adapter or base adapter, response schema, retries, scrubbed errors) and
cannot drift from it. It is not metered as tenant traffic. Cases run one at a time at
temperature 0, so the verdict is reproducible.

An evaluation set (the release's `eval`):

    {"cases": [{"messages": [{"role": "user", "content": "Say hi as JSON"}],
                "max_tokens": 64,
                "checks": {"json_schema": {...}, "must_contain": ["hi"],
                           "must_not_contain": ["sorry"], "max_latency_ms": 5000}}],
     "min_pass_rate": 1.0}

`must_contain` / `must_not_contain` compare case-insensitively.

    report = await run_release_eval(state, release)          # per-case results
    await gate_promotion(state, "acme", "support", expected_revision=7)   # raises EvalRejected
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.errors import AdapterError
from gateway.errors import ApiError
from gateway.serving.call import Call, new_request_id
from gateway.serving.chat import render_release
from gateway.serving.output_checks import conforms
from gateway.serving.relay import open_engine, read_answer
from gateway.serving.render import Limits, Rendering, parse_chat_request, render_engine_body
from gateway.state import AppState
from registry.compact import AnyAdapter, AnyAlias
from registry.errors import RegistryError
from registry.models import Release

DEFAULT_MAX_TOKENS = 64
log = logging.getLogger("loragate.evaluation")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Checks(_Model):
    json_schema: dict[str, Any] | None = None
    must_contain: tuple[str, ...] = ()
    must_not_contain: tuple[str, ...] = ()
    max_latency_ms: float | None = Field(default=None, gt=0)


class Case(_Model):
    messages: tuple[dict[str, Any], ...] = Field(min_length=1)
    checks: Checks = Checks()
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=4096)
    name: str | None = None


class EvalSet(_Model):
    cases: tuple[Case, ...] = Field(min_length=1, max_length=200)
    min_pass_rate: float = Field(default=1.0, ge=0.0, le=1.0)


class EvalSetInvalid(ValueError):
    """The release's `eval` is not a valid evaluation set."""


def parse_eval(raw: dict[str, Any]) -> EvalSet:
    try:
        return EvalSet.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"invalid eval set at {where or 'top level'}: {first['msg']}"
        raise EvalSetInvalid(message) from None


@dataclass(frozen=True)
class CaseResult:
    index: int
    name: str | None
    passed: bool
    failures: tuple[str, ...]
    latency_ms: float
    output: str

    def view(self) -> dict[str, Any]:
        return {
            "case": self.index,
            "name": self.name,
            "passed": self.passed,
            "failures": list(self.failures),
            "latency_ms": round(self.latency_ms, 1),
            "output": self.output[:500],
        }


@dataclass(frozen=True)
class EvalReport:
    release: str
    min_pass_rate: float
    results: tuple[CaseResult, ...] = field(default_factory=tuple)

    @property
    def pass_rate(self) -> float:
        if not self.results:
            return 1.0
        return sum(r.passed for r in self.results) / len(self.results)

    @property
    def passed(self) -> bool:
        return self.pass_rate >= self.min_pass_rate

    def view(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "passed": self.passed,
            "pass_rate": round(self.pass_rate, 4),
            "min_pass_rate": self.min_pass_rate,
            "cases": [r.view() for r in self.results],
        }

    def summary(self) -> str:
        failing = [r for r in self.results if not r.passed]
        listed = "; ".join(f"case {r.index}: {', '.join(r.failures)}" for r in failing[:5])
        more = f"; and {len(failing) - 5} more" if len(failing) > 5 else ""
        return (
            f"Evaluation of release {self.release} failed: pass rate {self.pass_rate:.2f} "
            f"< {self.min_pass_rate:.2f} ({listed}{more})."
        )


def check_case(index: int, case: Case, output: str | None, latency_ms: float) -> CaseResult:
    """Pure: apply a case's checks to what the release answered (None: it did not answer)."""
    failures: list[str] = []
    text = output or ""
    if output is None:
        failures.append("no answer")
    checks = case.checks
    if checks.json_schema is not None and (
        output is None or not conforms(orjson.dumps(checks.json_schema), text)
    ):
        failures.append("json_schema: output does not match")
    lowered = text.lower()
    failures += [f"must_contain {s!r}" for s in checks.must_contain if s.lower() not in lowered]
    failures += [f"must_not_contain {s!r}" for s in checks.must_not_contain if s.lower() in lowered]
    if checks.max_latency_ms is not None and latency_ms > checks.max_latency_ms:
        failures.append(f"max_latency_ms {latency_ms:.0f} > {checks.max_latency_ms:g}")
    return CaseResult(index, case.name, not failures, tuple(failures), latency_ms, text)


class EvalRejected(ApiError):
    """422 `eval_failed`: the error envelope plus the per-case results under `error.cases`."""

    def __init__(self, report: EvalReport) -> None:
        super().__init__("eval_failed", report.summary())
        self.report = report

    def body(self) -> dict[str, object]:
        body = super().body()
        error = body["error"]
        assert isinstance(error, dict)
        error["cases"] = [r.view() for r in self.report.results if not r.passed]
        error["pass_rate"] = round(self.report.pass_rate, 4)
        error["release"] = self.report.release
        return body


def _rendering(state: AppState, release: Release) -> tuple[Rendering, AnyAdapter | None]:
    """The engine request the release makes for its tenants, and the adapter it is served by."""
    snapshot = state.watcher.state
    adapter, _ = snapshot.release_parts(release)
    if release.adapter is not None and adapter is None:
        raise ApiError("not_found", f"Adapter of release {release.id!r} is not in the snapshot.")
    tenant = snapshot.tenants.get(release.tenant)
    if tenant is None:
        raise ApiError("not_found", f"Tenant of release {release.id!r} is not in the snapshot.")
    return render_release(state, snapshot, tenant, release)


async def _answer(
    state: AppState,
    release: Release,
    rendering: Rendering,
    adapter: AnyAdapter | None,
    case: Case,
) -> str | None:
    """The release's answer to one case, through the tenant path's engine call (retries on
    another replica, a restarted engine's adapter loaded again, engine messages scrubbed)."""
    body = {"model": release.alias, "messages": list(case.messages), "max_tokens": case.max_tokens}
    limits = Limits(max_messages=state.settings.max_messages, max_n=1, max_tokens_cap=None)
    engine_body = render_engine_body(parse_chat_request(body, limits), rendering)
    engine_body["temperature"] = 0
    call = Call(request_id=new_request_id(), started=time.perf_counter(), alias=release.alias)
    call.release, call.adapter = release, adapter
    try:
        lease, response = await open_engine(state.upstream, call, engine_body)
        data = orjson.loads(await read_answer(state.upstream.pool, lease, response))
    except (ApiError, orjson.JSONDecodeError):
        return None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return None
    return str((choices[0].get("message") or {}).get("content") or "")


async def run_release_eval(state: AppState, release: Release) -> EvalReport | None:
    """Run the release's evaluation set; None when the release carries none."""
    if not release.eval:
        return None
    try:
        eval_set = parse_eval(release.eval)
    except EvalSetInvalid as exc:
        raise ApiError("invalid_request", str(exc), param="eval") from None
    rendering, adapter = _rendering(state, release)
    results = []
    for i, case in enumerate(eval_set.cases):
        started = time.perf_counter()
        output = await _answer(state, release, rendering, adapter, case)
        latency_ms = (time.perf_counter() - started) * 1000
        results.append(check_case(i, case, output, latency_ms))
    return EvalReport(release.id, eval_set.min_pass_rate, tuple(results))


async def eval_passes(state: AppState, alias: AnyAlias) -> bool:
    """The auto-promotion gate: a canary whose evaluation set fails is never promoted by itself."""
    if alias.canary is None:
        return False
    if state.watcher.state.release(alias.tenant, alias.canary) is None:
        return False
    try:
        # The snapshot holds no evaluation sets: the full record, on demand.
        release = await state.store.get_release(alias.tenant, alias.canary)
        report = await run_release_eval(state, release)
    except (ApiError, AdapterError, RegistryError) as exc:
        log.warning("evaluation of %s/%s could not run: %s", alias.tenant, release.id, exc.code)
        return False
    return report is None or report.passed


async def evaluate_alias(
    state: AppState, tenant: str, alias: str, release_id: str | None = None
) -> EvalReport:
    """On demand: the named release of the alias (default: its canary, else its stable)."""
    current = await state.store.get_alias(tenant, alias)
    rid = release_id or current.canary or current.stable
    if rid is None:
        raise ApiError("not_found", f"Model {alias!r} has no release to evaluate.")
    release = await state.store.get_release(tenant, rid)
    if release.alias != alias:
        raise ApiError("invalid_request", "The release belongs to another model alias.", "release")
    await state.watcher.refresh()  # the release's parts must be in the snapshot to render it
    report = await run_release_eval(state, release)
    if report is None:
        raise ApiError("invalid_request", f"Release {rid!r} carries no evaluation set.", "release")
    return report


async def gate_promotion(
    state: AppState, tenant: str, alias: str, *, expected_revision: int, skip: bool = False
) -> EvalReport | None:
    """Before `promote`: run the canary's evaluation set; raise EvalRejected when it fails.

    Nothing is checked when `skip` is set, the alias has no canary, or the revision is stale:
    the promote's own compare-and-set then answers (404, 409, 422 invalid_rollout).
    """
    if skip:
        return None
    current = await state.store.get_alias(tenant, alias)
    if current.canary is None or current.revision != expected_revision:
        return None
    release = await state.store.get_release(tenant, current.canary)
    report = await run_release_eval(state, release)
    if report is not None and not report.passed:
        raise EvalRejected(report)
    return report
