"""A local OTLP/HTTP trace receiver for the tests: what an OpenTelemetry Collector's `otlp`
receiver does with `POST /v1/traces`, keeping the spans it decodes.

As strict as a collector about what it accepts: protobuf only (`application/x-protobuf`;
JSON, which Talon's exporter never sends, is a 415), a body that does not decode as an
ExportTraceServiceRequest is a 400, any other path a 404.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace id, span id)
    events: list[str]
    status_code: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int


def _value(any_value: Any) -> Any:
    which = any_value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, which) if which else None


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    return self._answer(404, b"")
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    return self._answer(415, b"")
                request = ExportTraceServiceRequest()
                try:
                    request.ParseFromString(body)
                except DecodeError:
                    return self._answer(400, b"")
                receiver._keep(request)
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, payload: bytes) -> None:
                if status != 200:
                    with receiver._lock:
                        receiver.refused.append((status, self.path))
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def _keep(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(ReceivedSpan(
                        service=str(resource.get("service.name", "")), name=span.name,
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(), kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        events=[e.name for e in span.events], status_code=span.status.code,
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    ))  # fmt: skip
        with self._lock:
            self.spans.extend(found)

    def wait_for(self, predicate: Any, timeout: float = 20) -> list[ReceivedSpan]:
        """The spans received so far, once `predicate(spans)` holds (AssertionError if it
        does not within `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never matched; received {[s.name for s in spans]}")
            time.sleep(0.1)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
