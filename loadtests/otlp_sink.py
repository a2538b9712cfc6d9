"""An OTLP/HTTP trace receiver on 127.0.0.1: accepts `POST /v1/traces` (protobuf), decodes it and
counts what arrived; `GET /stats` answers the counts as JSON. The bench runs it as a process so the
traced gateway's export cost is real (serialising, the HTTP round trip), and the e2e tests run it
in a thread with `keep=True` to read the spans back.

    python -m loadtests.otlp_sink --port 4318       # the bench: counts only
    sink = OtlpSink(keep=True); sink.start(); ...; sink.wait_for(lambda s: ..., timeout=60)
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

Spans = list[tuple[dict[str, str], Span]]  # (resource attributes as strings, span)


class OtlpSink:
    def __init__(self, port: int = 0, *, keep: bool = False) -> None:
        self.keep = keep
        self.exports = 0
        self.spans = 0
        self.bytes = 0
        self.kept: Spans = []
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def stats(self) -> dict[str, int]:
        with self._changed:
            return {"exports": self.exports, "spans": self.spans, "bytes": self.bytes}

    def receive(self, payload: bytes) -> None:
        message = ExportTraceServiceRequest()
        message.ParseFromString(payload)
        found: Spans = []
        count = 0
        for resource in message.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                count += len(scope.spans)
                if self.keep:
                    found += [(attrs, span) for span in scope.spans]
        with self._changed:
            self.exports += 1
            self.spans += count
            self.bytes += len(payload)
            self.kept += found
            self._changed.notify_all()

    def wait_for(self, done: Callable[[Spans], bool], timeout: float) -> Spans:
        """The kept spans once `done(spans)` holds; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.kept):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.kept)} spans after {timeout} s")
                self._changed.wait(left)
            return list(self.kept)

    def start(self) -> OtlpSink:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the exporter reuses its connection

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if self.path != "/v1/traces":
                    return self._answer(404, b"", "text/plain")
                if self.headers.get_content_type() != "application/x-protobuf":
                    return self._answer(415, b"", "text/plain")  # OTLP/JSON is not spoken here
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                try:
                    sink.receive(body)
                except Exception:
                    return self._answer(400, b"", "text/plain")
                self._answer(200, b"", "application/x-protobuf")

            def do_GET(self) -> None:
                if self.path != "/stats":
                    return self._answer(404, b"", "text/plain")
                self._answer(200, json.dumps(sink.stats()).encode(), "application/json")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # one line per export would cost the client core for nothing

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    sink = OtlpSink(args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sink.serve()
    finally:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
