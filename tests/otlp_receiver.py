"""A local OTLP/HTTP receiver for the tests: what an OpenTelemetry Collector's `otlp` receiver
does with `POST /v1/traces` and `POST /v1/metrics`, keeping the spans and the latest value of
each metric's points (Talon's exporter sends cumulative figures).

As strict as a collector about what it accepts: protobuf only (`application/x-protobuf`;
JSON, which Talon's exporter never sends, is a 415), a body that does not decode as an
Export*ServiceRequest is a 400, any other path a 404.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value_of_number(point: Any) -> Any:
    return point.as_int if point.WhichOneof("value") == "as_int" else point.as_double


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


Point = tuple[str, str, frozenset[tuple[str, Any]]]  # service, metric, attributes


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    # The latest value of each point: a number (sum, gauge) or a histogram's (count, sum).
    points: dict[Point, Any] = field(default_factory=dict)
    refused: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kinds: dict[str, tuple[Any, Any, Any]] = {
                    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse,
                                   receiver._keep),
                    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse,
                                    receiver._keep_metrics),
                }  # fmt: skip
                if self.path not in kinds:
                    return self._answer(404, b"")
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    return self._answer(415, b"")
                request_type, response_type, keep = kinds[self.path]
                request = request_type()
                try:
                    request.ParseFromString(body)
                except DecodeError:
                    return self._answer(400, b"")
                keep(request)
                self._answer(200, response_type().SerializeToString())

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

    def _keep_metrics(self, request: ExportMetricsServiceRequest) -> None:
        found: dict[Point, Any] = {}
        for resource_metrics in request.resource_metrics:
            resource = {a.key: _value(a.value) for a in resource_metrics.resource.attributes}
            service = str(resource.get("service.name", ""))
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    data = getattr(metric, metric.WhichOneof("data"))
                    for point in data.data_points:
                        attributes = frozenset((a.key, _value(a.value)) for a in point.attributes)
                        if metric.WhichOneof("data") == "histogram":
                            value: Any = (point.count, point.sum)
                        else:
                            value = _value_of_number(point)
                        found[(service, metric.name, attributes)] = value
        with self._lock:
            self.points.update(found)

    def metric(self, service: str, name: str, **attributes: Any) -> list[Any]:
        """The latest values of `name`'s points from `service` whose attributes include
        `attributes`."""
        with self._lock:
            return [
                value for (svc, metric, attrs), value in self.points.items()
                if svc == service and metric == name and set(attributes.items()) <= attrs
            ]  # fmt: skip

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
