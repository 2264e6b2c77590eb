"""A turn attempt's trace and metrics.

The trace: the attempt's span (a child of whatever queued the turn: a request, a schedule
fire), linked to the attempt before it when the turn was resumed, and one child span per step.
The metrics: turns started and ended, queue wait and run time, step latency, model tokens and
failed attempts, tool calls. All of it is a no-op while nothing is exported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from talon.runtime.claim import Claim, note_attempt_span
from talon.runtime.journal import KNOWLEDGE
from talon.runtime.providers.base import ModelResponse
from talon.store.database import Database
from talon.telemetry import metrics, tracing


def _who(claimed: Claim) -> dict[str, str | int | float | bool]:
    return metrics.where(namespace=claimed.agent.namespace, agent=claimed.agent.agent)


@contextmanager
def attempt(db: Database, claimed: Claim) -> Iterator[tracing.Span]:
    turn, agent = claimed.turn, claimed.agent
    metrics.turns_started.add(1, _who(claimed))
    if int(turn["attempts"]) == 1 and turn.get("created_at") is not None:
        waited = (turn["started_at"] - turn["created_at"]).total_seconds()
        metrics.queue_wait.record(max(0.0, waited), _who(claimed))
    if claimed.knowledge_ns is not None:
        start, end = claimed.knowledge_ns
        metrics.step_latency.record((end - start) / 1e9, {"kind": "knowledge"})
    attributes: dict[str, str | int] = {
        "talon.namespace": agent.namespace, "talon.agent": agent.agent,
        "talon.session": agent.session_id, "talon.turn.id": str(turn["id"]),
        "talon.turn.seq": int(turn["seq"]), "talon.turn.attempt": int(turn["attempts"]),
    }  # fmt: skip
    with tracing.span(
        # A child of what queued the turn; linked to the attempt before it and to the
        # delivery that brought it here (a delivery may drive several turns of a session).
        "turn", parent=turn.get("traceparent"),
        links=[turn.get("attempt_span"), tracing.current_traceparent()],
        kind=tracing.SpanKind.CONSUMER, attributes=attributes, start_time=claimed.started_ns,
    ) as current:  # fmt: skip
        if current.is_recording():
            # The next attempt, if this one dies, links back to it.
            note_attempt_span(db, claimed.lease, tracing.current_traceparent())
            if claimed.knowledge_ns is not None:
                start, end = claimed.knowledge_ns
                documents = claimed.journal[0].output.get("documents", [])
                tracing.record_span(KNOWLEDGE, start, end, {"talon.documents": len(documents)})
        yield current


def ended(claimed: Claim, outcome: str) -> None:
    """The turn this attempt ran ended: `completed` or `failed`."""
    metrics.turns_ended.add(1, {**_who(claimed), "outcome": outcome})
    started: datetime | None = claimed.turn.get("started_at")
    if started is not None:
        ran = (datetime.now(UTC) - started).total_seconds()
        metrics.run_time.record(max(0.0, ran), {**_who(claimed), "outcome": outcome})


@contextmanager
def step(name: str, kind: str, **attributes: Any) -> Iterator[tracing.Span]:
    """A step's span and latency."""
    began = time.monotonic()
    with tracing.span(name, attributes=metrics.where(**attributes)) as current:
        try:
            yield current
        finally:
            metrics.step_latency.record(time.monotonic() - began, {"kind": kind})


def noting_failures(
    then: Callable[[str, Exception], None],
) -> Callable[[str, Exception], None]:
    """`then`, after noting the failed model attempt (a retry or a failover is next, or the
    step fails): an event on the model step's span, and a count."""

    def attempt_failed(label: str, error: Exception) -> None:
        tracing.event("model.attempt_failed", {"talon.provider": label, "error": str(error)[:300]})
        profile, provider, model = _parts(label)
        metrics.model_failures.add(1, {"profile": profile, "provider": provider, "model": model})
        then(label, error)

    return attempt_failed


def _parts(label: str) -> tuple[str, str, str]:
    """`profile/provider:model` (runtime/failover.py) in its parts."""
    profile, _, rest = label.partition("/")
    provider, _, model = rest.partition(":")
    return profile, provider, model


def model_answered(current: tracing.Span, response: ModelResponse) -> None:
    profile, provider, model = _parts(response.provider)
    usage = response.usage or {}
    tracing.set_attributes(current, {
        "talon.profile": profile, "gen_ai.system": provider, "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": usage.get("promptTokens"),
        "gen_ai.usage.output_tokens": usage.get("completionTokens"),
        "talon.tool_calls": len(response.tool_calls),
    })  # fmt: skip
    where = {"profile": profile, "provider": provider, "model": model}
    for kind, key in (("input", "promptTokens"), ("output", "completionTokens")):
        if usage.get(key):
            metrics.model_tokens.add(int(usage[key]), {**where, "type": kind})


@contextmanager
def tool_call(idx: int, name: str) -> Iterator[tracing.Span]:
    server, dot, tool = name.rpartition(".")
    with step(
        f"call-{name}", "tool", **{"talon.step.index": idx, "talon.tool": name,
                                   "talon.tool.source": server if dot else None,
                                   "talon.tool.name": tool if dot else None}
    ) as current:  # fmt: skip
        yield current


def tool_answered(current: tracing.Span, name: str, is_error: bool) -> None:
    current.set_attribute("talon.tool.is_error", is_error)
    if is_error:
        tracing.fail(current, "the tool call returned an error")
    server, dot, _ = name.rpartition(".")
    metrics.tool_calls.add(1, {"source": server if dot else "builtin", "tool": name,
                               "outcome": "error" if is_error else "ok"})  # fmt: skip
