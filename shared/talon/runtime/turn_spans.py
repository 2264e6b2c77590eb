"""A turn attempt's trace: the attempt's span (a child of whatever queued the turn: a request,
a schedule fire), linked to the attempt before it when the turn was resumed, and one child
span per step. Everything here is a no-op while traces are not exported."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from talon.runtime.claim import Claim, note_attempt_span
from talon.runtime.journal import KNOWLEDGE
from talon.runtime.providers.base import ModelResponse
from talon.store.database import Database
from talon.telemetry import tracing


@contextmanager
def attempt(db: Database, claimed: Claim) -> Iterator[tracing.Span]:
    turn, agent = claimed.turn, claimed.agent
    attributes: dict[str, str | int] = {
        "talon.namespace": agent.namespace, "talon.agent": agent.agent,
        "talon.session": agent.session_id, "talon.turn.id": str(turn["id"]),
        "talon.turn.seq": int(turn["seq"]), "talon.turn.attempt": int(turn["attempts"]),
    }  # fmt: skip
    with tracing.span(
        "turn", parent=turn.get("traceparent"), links=[turn.get("attempt_span")],
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


@contextmanager
def model_call(idx: int) -> Iterator[tracing.Span]:
    with tracing.span("call-model", attributes={"talon.step.index": idx}) as current:
        yield current


def noting_failures(
    then: Callable[[str, Exception], None],
) -> Callable[[str, Exception], None]:
    """`then`, after noting the failed model attempt (a retry or a failover is next) as an
    event on the model step's span."""

    def attempt_failed(label: str, error: Exception) -> None:
        tracing.event("model.attempt_failed", {"talon.provider": label, "error": str(error)[:300]})
        then(label, error)

    return attempt_failed


def model_answered(current: tracing.Span, response: ModelResponse) -> None:
    profile, _, rest = response.provider.partition("/")
    provider, _, model = rest.partition(":")
    usage = response.usage or {}
    tracing.set_attributes(current, {
        "talon.profile": profile, "gen_ai.system": provider, "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": usage.get("promptTokens"),
        "gen_ai.usage.output_tokens": usage.get("completionTokens"),
        "talon.tool_calls": len(response.tool_calls),
    })  # fmt: skip


@contextmanager
def tool_call(idx: int, name: str) -> Iterator[tracing.Span]:
    server, dot, tool = name.rpartition(".")
    attributes: dict[str, Any] = {"talon.step.index": idx, "talon.tool": name}
    if dot:
        attributes.update({"talon.tool.source": server, "talon.tool.name": tool})
    with tracing.span(f"call-{name}", attributes=attributes) as current:
        yield current


def tool_answered(current: tracing.Span, is_error: bool) -> None:
    current.set_attribute("talon.tool.is_error", is_error)
    if is_error:
        tracing.fail(current, "the tool call returned an error")
