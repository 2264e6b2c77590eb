"""Spans and trace context, over the OpenTelemetry API.

Until `telemetry/setup.py` installs the SDK (only when an exporter is configured), the API's
spans are non-recording no-ops: instrumented code costs next to nothing with tracing off.
Trace context crosses processes as a W3C `traceparent` string: in HTTP headers, on a turn's
row, in a broker message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "Attributes", "Span", "SpanKind", "current_ids", "current_traceparent", "event", "fail",
    "fail_current", "record_span", "set_attributes", "span", "span_ended_later",
]  # fmt: skip

_tracer = trace.get_tracer("talon")
_propagator = TraceContextTextMapPropagator()
Attributes = Mapping[str, str | int | float | bool | Sequence[str]]


def _context(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


@contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    links: Sequence[str | None] = (),
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes | None = None,
    start_time: int | None = None,
) -> Iterator[Span]:
    """A span, current while the block runs: a child of `parent` (a traceparent) when given,
    else of the current span; `links` are traceparents of related spans (an earlier attempt).
    An exception escaping the block is recorded on it and marks it failed."""
    linked = []
    for traceparent in links:
        context = _context(traceparent)
        if context is not None:
            span_context = trace.get_current_span(context).get_span_context()
            if span_context.is_valid:
                linked.append(Link(span_context))
    with _tracer.start_as_current_span(
        name, context=_context(parent), kind=kind, links=linked, attributes=attributes,
        start_time=start_time,
    ) as current:  # fmt: skip
        yield current


@contextmanager
def span_ended_later(
    name: str, *, parent: str | None, kind: SpanKind, attributes: Attributes
) -> Iterator[Span]:
    """A span current while the block runs (what it sends names it) that the caller ends,
    `current.end()`, when the work it times completes elsewhere: in a callback. An exception
    escaping the block ends it, failed."""
    current = _tracer.start_span(name, context=_context(parent), kind=kind, attributes=attributes)
    try:
        with trace.use_span(current, end_on_exit=False):
            yield current
    except BaseException as exc:
        current.record_exception(exc)
        fail(current, str(exc))
        current.end()
        raise


def record_span(name: str, start_time: int, end_time: int, attributes: Attributes) -> None:
    """A finished child of the current span that ran from `start_time` to `end_time` (epoch
    nanoseconds): work timed before its parent span could be started."""
    _tracer.start_span(name, start_time=start_time, attributes=attributes).end(end_time)


def event(name: str, attributes: Attributes | None = None) -> None:
    """Something that happened during the current span (a retry, a failover)."""
    trace.get_current_span().add_event(name, attributes)


def fail_current(description: str) -> None:
    fail(trace.get_current_span(), description)


def fail(current: Span, description: str) -> None:
    """Mark `current` failed without an exception (a turn that ends `failed`)."""
    current.set_status(Status(StatusCode.ERROR, description))


def current_traceparent() -> str | None:
    """The current span's context as a traceparent, or None outside any span."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def current_ids() -> tuple[str, str, bool] | None:
    """(trace id, span id, sampled) of the current span in hex, for log correlation."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}", context.trace_flags.sampled


def set_attributes(current: Span, attributes: Mapping[str, Any]) -> None:
    """Set the attributes that have a value (None is skipped, as OpenTelemetry wants)."""
    current.set_attributes({k: v for k, v in attributes.items() if v is not None})
