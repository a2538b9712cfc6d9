"""One tenant request on its way through the gateway, and the single place it is metered.

    call = Call(request_id=new_request_id(), started=time.perf_counter())
    ...
    finish(state, call, "ok")        # idempotent: the first outcome wins

Labels are registered ids only (`unknown` until the pipeline has resolved them).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Protocol

from gateway.engines.fairqueue import Flow
from gateway.errors import status_of
from gateway.limits.limiter import Reservation
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.requestlog import CANCELLED_STATUS, emit, request_record
from gateway.observability.series import SeriesKey
from gateway.observability.tracing import RequestTrace
from gateway.serving.output_checks import Verdict
from gateway.state import AppState
from registry.compact import AnyAdapter, AnyKey, AnyRelease, AnyTenant
from registry.models import Arm


@dataclass(slots=True)
class Call:
    request_id: str
    started: float
    tenant: AnyTenant | None = None
    key: AnyKey | None = None
    alias: str = "unknown"
    release: AnyRelease | None = None
    arm: Arm = "stable"
    adapter: AnyAdapter | None = None
    flow: Flow | None = None  # the fair queue's (tenant, weight, band); set by resolve()
    overhead: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    reservation: Reservation | None = None  # tenant limits; settled once in finish()
    key_reservation: Reservation | None = None  # the key's own limits, when it has any
    verdict: Verdict = field(default_factory=Verdict)  # output checks, for the canary windows
    responded: bool = False  # the response has started: errors can only be stream events now
    stream: bool = False
    finished: bool = False
    engine_path: str = "/v1/chat/completions"
    trace: RequestTrace | None = None  # set only when tracing is on (gateway.observability.tracing)
    traceparent: str | None = None  # the client's, passed on when tracing is off
    keepalive: KeepAliveLike | None = None  # SSE comments while a stream waits for its first token

    @property
    def release_id(self) -> str:
        return self.release.id if self.release is not None else "unknown"

    @property
    def tenant_id(self) -> str:
        return self.tenant.id if self.tenant is not None else "unknown"


class KeepAliveLike(Protocol):
    async def stop(self) -> None: ...

    def cancel(self) -> None: ...


def engine_headers(call: Call) -> dict[str, str]:
    """What the engine gets besides the body: the request id the client got (vLLM takes it as its
    own request id, `chatcmpl-<id>`) and the trace context."""
    headers = {"X-Request-Id": call.request_id}
    if call.trace is not None:
        headers["traceparent"] = call.trace.traceparent()
    elif call.traceparent is not None:
        headers["traceparent"] = call.traceparent
    return headers


def new_request_id() -> str:
    return "req-" + os.urandom(12).hex()


def record_guard(metrics: GatewayMetrics, call: Call, verdict: Verdict) -> None:
    call.verdict = verdict
    if verdict.refusal:
        metrics.count_refusal(call.tenant_id, call.alias, call.release_id, call.arm)
    if verdict.schema_violation:
        metrics.count_schema_violation(call.tenant_id, call.alias, call.release_id, call.arm)


def finish(state: AppState, call: Call, code: str) -> None:
    """Meter the request once, whatever its outcome; settle its limits reservation."""
    if call.finished:
        return
    call.finished = True
    duration = time.perf_counter() - call.started
    if code in ("ok", "cancelled"):
        status = code
    else:
        status = "server_error" if status_of(code) >= 500 else "client_error"
    cost = 0.0
    if call.tenant is not None:
        price = state.settings.price_for(call.tenant.plan)
        cost = price.cost(call.prompt_tokens, call.completion_tokens)
    for held in (call.reservation, call.key_reservation):
        if held is not None:
            state.limiter.settle(held, call.prompt_tokens, call.completion_tokens, cost)
    state.metrics.observe_request(
        tenant=call.tenant_id,
        model=call.alias,
        release=call.release_id,
        arm=call.arm,
        status=status,
        duration_s=duration,
        overhead_s=call.overhead,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        cost=cost,
    )
    series = SeriesKey(call.tenant_id, call.alias, call.release_id, call.arm)
    state.canary_windows.observe(
        series, status, duration, call.verdict.refusal, call.verdict.schema_violation
    )
    if status != "ok":
        state.metrics.count_error(call.tenant_id, code)
    engine = call.headers.get("x-loragate-engine")
    if engine is not None:
        tokens = call.prompt_tokens + call.completion_tokens
        state.engine_time.add_tokens(engine, series, tokens, at=time.time())
    if state.settings.request_log:
        _log(call, engine, code, status, duration, cost)
    if call.trace is not None:
        if engine is not None:
            call.trace.mark("relay")
        call.trace.end(
            {
                "loragate.request_id": call.request_id,
                "loragate.tenant": call.tenant_id,
                "loragate.alias": call.alias,
                "loragate.release": call.release_id,
                "loragate.arm": call.arm,
                "loragate.replica": engine or "none",
                "loragate.stream": call.stream,
                "loragate.outcome": code,
                "gen_ai.usage.input_tokens": call.prompt_tokens,
                "gen_ai.usage.output_tokens": call.completion_tokens,
            },
            None if status in ("ok", "cancelled") else code,
        )


def _log(
    call: Call, engine: str | None, code: str, outcome: str, duration: float, cost: float
) -> None:
    if outcome == "ok":
        http_status = 200
    elif outcome == "cancelled":
        http_status = CANCELLED_STATUS
    else:
        http_status = 200 if call.responded else status_of(code)  # a stream ends with an event
    emit(
        request_record(
            request_id=call.request_id,
            tenant=call.tenant_id,
            key_id=call.key.key_id if call.key is not None else None,
            model=call.alias,
            release=call.release_id,
            arm=call.arm if call.release is not None else None,
            engine=engine,
            stream=call.stream,
            outcome=outcome,
            code=None if outcome in ("ok", "cancelled") else code,
            http_status=http_status,
            duration_s=duration,
            overhead_s=call.overhead,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cost=cost,
            now=time.time(),
        )
    )
