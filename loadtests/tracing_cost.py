"""What one request's trace costs the gateway process, tracing on vs off (no network).

Off, the request path does `call.trace is None` at each phase boundary; on, it starts the root
span, records nine marks and builds the child spans when the request is metered, and a batch
processor hands them to the exporter on its own thread (here one that drops them, so the figure is
the gateway's own work, not the collector's).

    python -m loadtests.tracing_cost          # prints µs per request both ways
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from gateway.observability.tracing import RequestTrace, Tracing

PHASES = ("auth", "receive", "resolve", "limits", "engine.queue", "engine.call", "first_token",
          "relay")  # fmt: skip
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _off(n: int) -> float:
    trace: RequestTrace | None = None
    t = time.perf_counter()
    for _ in range(n):
        for _phase in PHASES:
            if trace is not None:
                trace.mark(_phase)
    return (time.perf_counter() - t) / n


def _on(tracing: Tracing, n: int) -> float:
    attributes = {"loragate.tenant": "t1", "loragate.alias": "chat", "loragate.release": "chat-r1",
                  "loragate.arm": "stable", "loragate.replica": "engine-0"}  # fmt: skip
    t = time.perf_counter()
    for _ in range(n):
        trace = tracing.begin("POST /v1/chat/completions", TP)
        trace.traceparent()
        for phase in PHASES:
            trace.mark(phase)
        trace.end(attributes, None)
    return (time.perf_counter() - t) / n


def run(requests: int = 20_000) -> dict[str, Any]:
    tracing = Tracing.with_processor(BatchSpanProcessor(_Drop(), max_queue_size=1 << 20))
    _on(tracing, 500)  # warm-up
    on = _on(tracing, requests)
    tracing.shutdown()
    return {"requests": requests, "off_us": _off(requests) * 1e6, "on_us": on * 1e6}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
