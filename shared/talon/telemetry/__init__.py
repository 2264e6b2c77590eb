"""Traces: `tracing.py` is what the rest of Talon uses (spans, trace context in and out);
`setup.py` installs the OpenTelemetry SDK and its exporter from the standard OTEL_* variables."""
