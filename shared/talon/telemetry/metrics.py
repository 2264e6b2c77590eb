"""The metrics Talon records, over the OpenTelemetry API: what an operator alerts on.

Like spans, instruments are no-ops until `telemetry/setup.py` installs the SDK (only when a
metrics exporter is configured). Attribute values are bounded sets (namespaces, agents,
profiles, tool names): never ids of turns or sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

_meter = metrics.get_meter("talon")
Attributes = Mapping[str, str | int | float | bool]

# Seconds: turns and steps take milliseconds to minutes.
_SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]

turns_started = _meter.create_counter(
    "talon.turns.started", unit="{turn}", description="Turn attempts claimed by a worker."
)
turns_ended = _meter.create_counter(
    "talon.turns.ended", unit="{turn}",
    description="Turns that ended, by outcome: completed, failed or cancelled.",
)  # fmt: skip
queue_wait = _meter.create_histogram(
    "talon.turn.queue_wait", unit="s", explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
    description="From a turn's queueing to its first claim.",
)  # fmt: skip
run_time = _meter.create_histogram(
    "talon.turn.run_time", unit="s", explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
    description="From a turn's first claim to its end.",
)  # fmt: skip
step_latency = _meter.create_histogram(
    "talon.step.duration", unit="s", explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
    description="A step's duration, by kind: knowledge, model, tool, write.",
)  # fmt: skip
model_tokens = _meter.create_counter(
    "talon.model.tokens", unit="{token}",
    description="Tokens the model providers reported, by profile, provider, model and type.",
)  # fmt: skip
model_failures = _meter.create_counter(
    "talon.model.attempt_failures", unit="{attempt}",
    description="Model attempts that failed (a retry or a failover followed, or the step failed).",
)  # fmt: skip
tool_calls = _meter.create_counter(
    "talon.tool.calls", unit="{call}",
    description="Tool calls, by source (MCP server, skill, built-in), tool and outcome.",
)  # fmt: skip
schedule_lateness = _meter.create_histogram(
    "talon.schedule.lateness", unit="s", explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
    description="How long after its fire time a schedule fire queued its turn.",
)  # fmt: skip
open_streams = _meter.create_up_down_counter(
    "talon.streams.open", unit="{stream}", description="Session event streams open (SSE)."
)


def observe(
    name: str, unit: str, description: str,
    read: Callable[[], Iterable[tuple[float, Attributes]]],
) -> None:  # fmt: skip
    """A gauge read when metrics are collected (by the exporter's thread): `read` gives
    (value, attributes) pairs. A `read` that fails reports nothing that time."""

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(value, dict(attributes)) for value, attributes in read()]
        except Exception:
            return []

    _meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)


def where(**attributes: Any) -> dict[str, str | int | float | bool]:
    """Attributes without the missing ones."""
    return {k: v for k, v in attributes.items() if v is not None}
