"""One trace per tenant request: OpenTelemetry spans, exported over OTLP/HTTP when configured.

Off (no `LORAGATE_OTLP_ENDPOINT`), `state.tracing` is None and a request carries no trace: the
pipeline's only cost is an `is None` test at each phase boundary. On, the request's root span is
started when it arrives (its ids go to the engine in `traceparent`), each phase boundary records
one `time.time_ns()` mark, and the child spans are built from the marks when the request is
metered (`finish`), off the per-token path:

    trace = tracing.begin(CHAT_SPAN, traceparent_header)     # None when tracing is off
    trace.mark("auth")            # the phase called "auth" ended now
    ...
    trace.end(attributes, error) # children from the marks, then the root span

Phases, in order: auth, receive, resolve, limits, engine.queue (adapter.load when the adapter was
not resident), engine.call (until the engine's response headers), first_token, relay.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from opentelemetry import trace as otel
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
AttributeValue = str | int | float | bool


def parse_traceparent(value: str | None) -> SpanContext | None:
    """A W3C traceparent (version 00) as a remote span context; None when absent or invalid."""
    if not value or len(value) != 55:
        return None
    match = TRACEPARENT_RE.match(value.strip().lower())
    if match is None:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)))


def valid_traceparent(value: str | None) -> str | None:
    """The client's traceparent, normalised, when it is well formed (passed on with tracing off)."""
    if value is None or parse_traceparent(value) is None:
        return None
    return value.strip().lower()


class Tracing:
    """The process's tracer. Built in the app's lifespan; `shutdown()` flushes what is queued."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("loragate")

    @classmethod
    def otlp(
        cls, endpoint: str, service_name: str, headers: Mapping[str, str], sample_ratio: float = 1.0
    ) -> Tracing:
        """Spans batched and exported over OTLP/HTTP (protobuf) to `endpoint` (…/v1/traces)."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, headers=dict(headers), timeout=5)
        return cls.with_processor(BatchSpanProcessor(exporter), service_name, sample_ratio)

    @classmethod
    def with_processor(
        cls, processor: SpanProcessor, service_name: str = "loragate", sample_ratio: float = 1.0
    ) -> Tracing:
        """A client's sampled flag wins; requests without a traceparent are sampled at
        `sample_ratio` (an unsampled request builds no child spans)."""
        provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}),
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        )
        provider.add_span_processor(processor)
        return cls(provider)

    def begin(self, name: str, traceparent: str | None) -> RequestTrace:
        return RequestTrace(self, name, parse_traceparent(traceparent))

    def shutdown(self) -> None:
        self.provider.shutdown()


class RequestTrace:
    """One request's spans: a live root span, and phase marks that become children at the end."""

    __slots__ = ("_marks", "_span", "_start", "_tracer", "attributes")

    def __init__(self, tracing: Tracing, name: str, parent: SpanContext | None) -> None:
        self._tracer = tracing.tracer
        self._start = time.time_ns()
        context = otel.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        self._span = self._tracer.start_span(
            name, context=context, kind=SpanKind.SERVER, start_time=self._start
        )
        self._marks: list[tuple[str, int, dict[str, AttributeValue] | None]] = []
        self.attributes: dict[str, AttributeValue] = {}

    def mark(self, phase: str, attributes: dict[str, AttributeValue] | None = None) -> None:
        """The phase `phase` ended now (it began where the previous one ended)."""
        self._marks.append((phase, time.time_ns(), attributes))

    def traceparent(self) -> str:
        """This request's root span as the parent of the engine's work."""
        ctx = self._span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def end(self, attributes: Mapping[str, AttributeValue], error: str | None) -> None:
        root = self._span
        if not root.is_recording():  # not sampled: nothing to build
            root.end()
            return
        context = otel.set_span_in_context(root)
        begin = self._start
        for phase, at, extra in self._marks:
            span = self._tracer.start_span(phase, context=context, start_time=begin)
            if extra:
                span.set_attributes(extra)
            span.end(end_time=at)
            begin = at
        root.set_attributes({**attributes, **self.attributes})
        if error is not None:
            root.set_status(Status(StatusCode.ERROR, error))
        root.end(end_time=time.time_ns())
