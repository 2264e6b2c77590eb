"""Installs the OpenTelemetry SDK for traces and metrics, configured by the standard variables.

Nothing is installed (and spans and instruments stay no-ops) unless an exporter is asked for:
`OTEL_TRACES_EXPORTER` (`otlp`, `gcp_trace`, `console`, comma-separated; `none`),
`OTEL_METRICS_EXPORTER` (`otlp`, `gcp_monitoring`, `console`; `none`), or an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT`, or the `_TRACES_` / `_METRICS_` one), which means `otlp` for
that signal. `OTEL_SDK_DISABLED=true` turns it all off. The SDK itself reads the rest:
`OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60000),
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

if TYPE_CHECKING:  # the SDK is imported only when something is exported
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)
_lock = threading.Lock()
_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None


def exporter_names(environ: Mapping[str, str] = os.environ, signal: str = "traces") -> list[str]:
    """The exporters the environment asks for, for `signal` (traces or metrics); empty: off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip()
    if not raw:
        endpoint = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    return [] if names == ["none"] else names


def _unknown(signal: str, name: str, known: str) -> ConfigError:
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    return ConfigError(
        f"{variable}: unknown exporter {name!r} ({known} or none)",
        [{"path": variable, "message": f"unknown exporter {name!r}"}],
    )


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
    raise _unknown("traces", name, "otlp, gcp_trace, console")


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
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processors = [BatchSpanProcessor(_exporter(n)) for n in names]
        provider = TracerProvider(resource=_resource())
        for processor in processors:
            provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        _provider = provider
        log.info("traces exported with %s", ", ".join(names))
        return True


def _resource() -> Resource:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    service = os.environ.get("OTEL_SERVICE_NAME") or os.environ.get("K_SERVICE") or "talon"
    return Resource.create({SERVICE_NAME: service})


def _metric_exporter(name: str) -> MetricExporter:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    if name == "gcp_monitoring":
        from opentelemetry.exporter.cloud_monitoring import CloudMonitoringMetricsExporter

        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        return CloudMonitoringMetricsExporter(project_id=project)
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    raise _unknown("metrics", name, "otlp, gcp_monitoring, console")


def configure_metrics() -> bool:
    """Install the metrics SDK once per process when an exporter is configured; True when
    metrics are exported. Later calls change nothing."""
    global _meter_provider
    with _lock:
        if _meter_provider is not None:
            return True
        names = exporter_names(signal="metrics")
        if not names:
            return False
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers = [PeriodicExportingMetricReader(_metric_exporter(n)) for n in names]
        provider = MeterProvider(metric_readers=readers, resource=_resource())
        metrics.set_meter_provider(provider)
        _meter_provider = provider
        log.info("metrics exported with %s", ", ".join(names))
        return True


def metrics_exported() -> bool:
    return _meter_provider is not None


def configure_telemetry() -> bool:
    """Traces and metrics, each if configured; True when either is exported."""
    traced = configure_tracing()
    return configure_metrics() or traced


def flush_telemetry(timeout_millis: int = 5000) -> None:
    """Export what is buffered (before a process exits on purpose)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)
    if _meter_provider is not None:
        _meter_provider.force_flush(timeout_millis)
