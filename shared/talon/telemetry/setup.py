"""Installs the OpenTelemetry SDK for traces, configured by the standard variables.

Nothing is installed (and spans stay no-ops) unless an exporter is asked for:
`OTEL_TRACES_EXPORTER` (`otlp`, `gcp_trace`, `console`, comma-separated; `none`), or an OTLP
endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), which means
`otlp`. `OTEL_SDK_DISABLED=true` turns it all off. The SDK itself reads the rest:
`OTEL_SERVICE_NAME` (default: Cloud Run's `K_SERVICE`, else `talon`), `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER` / `_ARG` (default: parent-based, always on), `OTEL_BSP_*` (batching),
`OTEL_EXPORTER_OTLP_*` (endpoint, headers, timeout, protocol http/protobuf).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from talon.errors import ConfigError

if TYPE_CHECKING:  # the SDK is imported only when traces are exported
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)
_lock = threading.Lock()
_provider: TracerProvider | None = None


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The trace exporters the environment asks for (empty: tracing off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not raw:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    return [] if names == ["none"] else names


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "gcp_trace":
        from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        return CloudTraceSpanExporter(project_id=project)
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise ConfigError(
        f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, gcp_trace, console or none)",
        [{"path": "OTEL_TRACES_EXPORTER", "message": f"unknown exporter {name!r}"}],
    )


def configure_tracing() -> bool:
    """Install the SDK once per process when an exporter is configured; True when traces are
    exported. Later calls change nothing."""
    global _provider
    with _lock:
        if _provider is not None:
            return True
        names = exporter_names()
        if not names:
            return False
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processors = [BatchSpanProcessor(_exporter(n)) for n in names]
        service = os.environ.get("OTEL_SERVICE_NAME") or os.environ.get("K_SERVICE") or "talon"
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        for processor in processors:
            provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        _provider = provider
        log.info("traces exported with %s as %s", ", ".join(names), service)
        return True


def flush_traces(timeout_millis: int = 5000) -> None:
    """Export what is buffered (before a process exits on purpose)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)
