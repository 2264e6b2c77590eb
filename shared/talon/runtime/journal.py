"""The step journal of one turn, written under the turn's lease and fencing token.

This module owns `turn_steps`: it decides which step is written when, and nothing else in
the runtime writes or reads the table. Its statements are in `store/turn_steps.py`, a level
below, so that the session views can read a turn's steps too: the sessions layer sits below
the runtime (this module appends session events) and must not import it. Imports stay
one-way: runtime/journal -> store/turn_steps <- sessions/views.

The `turns` row is shared by contract, not by accident: the sessions layer queues and
cancels turns (a cancel bumps the fencing token), the worker claims one (runtime/claim.py)
and this journal renews its lease, journals its steps and completes it; each of the worker's
writes first checks the fencing token, so a cancelled or taken-over turn refuses them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from talon.broker.base import Condition
from talon.sessions import events
from talon.sessions import messages as session_messages
from talon.sessions.views import tool_call_preview
from talon.store import turn_steps
from talon.store.database import Tx
from talon.store.model_usage import ModelUsage
from talon.store.turn_steps import Step

__all__ = [
    "KNOWLEDGE", "MODEL", "RECORDED_SQL", "WRITE", "Fenced", "Lease", "Step",
    "begin_tool_call", "complete", "load", "record", "record_when", "renew",
]  # fmt: skip

# Step names, as the seed's stream shows them (tool steps are `call-<tool>`).
KNOWLEDGE = "load-knowledge"
MODEL = "call-model"
WRITE = "write-next-message"


class Fenced(Exception):
    """The turn was cancelled, deleted or taken over by another worker: stop writing."""


@dataclass(frozen=True)
class Lease:
    turn_id: uuid.UUID
    session_uid: uuid.UUID
    token: int
    seconds: float


def renew(tx: Tx, lease: Lease) -> None:
    """Check the fence and extend the lease; raise Fenced if this worker lost the turn.

    Locks the session row first, then the turn: the same order as the gateway and the claim,
    so concurrent writers queue instead of deadlocking.
    """
    if not turn_steps.renew(tx, lease):
        raise Fenced(str(lease.turn_id))


def load(tx: Tx, turn_id: uuid.UUID) -> list[Step]:
    return turn_steps.load(tx, turn_id)


def record(
    tx: Tx,
    lease: Lease,
    done: Step | None,
    starting: Step | None = None,
    *,
    before: list[tuple[str, dict[str, Any]]] | None = None,
    renewing: bool = True,
) -> None:
    """In the caller's transaction: journal the step that just finished and announce the next
    (after the events `before`). The turn's answer is journaled by `complete` instead.

    A tool step is also journaled when it starts: if the worker dies during the call, the
    resumed turn must not run it again (its effect may have happened) but answer it with an
    error result instead.
    """
    batch: list[tuple[str, dict[str, Any]]] = list(before or [])
    if done is not None:
        if renewing:  # False only right after the lease was taken in this transaction
            if not turn_steps.renew_and_write(tx, lease, done, usage_of(done)):
                raise Fenced(str(lease.turn_id))
        else:
            turn_steps.write(tx, lease, done)
    elif renewing:
        renew(tx, lease)
    if starting is not None and starting.kind == "tool":
        turn_steps.write(tx, lease, starting)
    batch += _step_events(done, starting)
    if batch:
        events.append(tx, lease.session_uid, batch, lease.turn_id)


def record_when(
    gate: str, done: Step, starting: Step, *, before: list[tuple[str, dict[str, Any]]]
) -> tuple[str, tuple[Any, ...]]:
    """What `record(tx, lease, done, starting, before=before, renewing=False)` writes, as
    CTEs of another statement, for the turn its CTE `{gate}` returns (`turn_id`,
    `session_uid`, `fencing_token`: a lease an earlier statement of the transaction took),
    or nothing if it returns none; comma-separated, without WITH. `RECORDED_SQL` says
    whether they wrote. (A tool step's start is written on its own: `record`.)"""
    if starting.kind == "tool":
        raise ValueError("a tool step's start is journaled by record()")
    step_sql, step_params = turn_steps.gated_write_cte(gate, done)
    events_sql, event_params = events.appending_ctes(gate, [*before, *_step_events(done, starting)])
    return f"{step_sql}, {events_sql}", step_params + event_params


RECORDED_SQL = events.APPENDED_SQL  # 1 if `record_when`'s CTEs wrote, else 0


def _step_events(done: Step | None, starting: Step | None) -> list[tuple[str, dict[str, Any]]]:
    """The events saying `done` finished and `starting` started."""
    said = []
    if done is not None:
        said.append((f"step.{done.state}", _step_event(done, summary=True)))
    if starting is not None:
        said.append(("step.started", _step_event(starting)))
    return said


def begin_tool_call(tx: Tx, lease: Lease, idx: int, name: str, call: dict[str, Any]) -> None:
    """Mark tool step `idx` as running its call, under this lease, before any side effect
    happens: a turn resumed after a crash answers such a call with an error result instead
    of running it twice."""
    renew(tx, lease)
    turn_steps.begin_call(tx, lease, idx, name, {"call": call, "ran": True})


def complete(
    tx: Tx,
    lease: Lease,
    idx: int,
    written: list[dict[str, Any]],
    provider: str | None,
    earlier: list[tuple[str, dict[str, Any]]],
    acknowledge: Callable[[Tx, Condition], None] | None = None,
    answer: Step | None = None,
) -> int:
    """The final step `idx`, as the transaction's last statement (it commits): the model step
    `answer` that gave the turn's answer (unless a resumed turn journaled it already) with
    the tokens it spent, the turn's messages `written` (see `sessions/messages.completing`),
    its events after `earlier` (the answer's step's end, the write step's, a
    `message.created` for each answer with text, `turn.completed`) and the turn's
    completion, in one statement after the session's lock, in one round trip.
    `acknowledge(tx, when)` acknowledges a delivery in the same round trip if the turn
    leaves its session with no open turn. Returns how many other turns of the session are
    still open; raises Fenced, having written nothing, if this worker lost the turn."""
    answered = None
    if answer is not None:
        usage = usage_of(answer)
        if usage is None:
            raise ValueError("a turn's answer is journaled with its model step")
        answered = (answer, usage)
    turn_steps.lock_session(tx, lease)
    if acknowledge is not None:
        acknowledge(tx, Condition(*turn_steps.idle_after_completion(lease)))
    write = {"step": WRITE, "index": idx, "kind": "write"}
    said = [*earlier, *_step_events(answer, None)]
    new_events: list[tuple[str, dict[str, Any], int | None]] = [
        *((event_type, data, None) for event_type, data in said),
        ("step.started", write, None),
    ]
    for ordinal, message in enumerate(written, start=1):
        if message["role"] == "assistant" and message["content"]:
            created = {"role": "assistant", "content": message["content"]}
            new_events.append(("message.created", created, ordinal))  # its seq from SQL
    new_events.append(("step.completed", write, None))
    new_events.append(("turn.completed", {"provider": provider}, None))  # openTurns too
    step = Step(idx, WRITE, "write", "completed", {"messages": len(written)})
    splice = session_messages.completing(lease.session_uid, lease.turn_id, written, new_events)
    completed = turn_steps.complete_turn(tx, lease, step, provider, splice, answered)
    if not completed.held:
        raise Fenced(str(lease.turn_id))
    return completed.open


def usage_of(step: Step) -> ModelUsage | None:
    """A model step's tokens and who answered (its provider label is `profile/provider:model`,
    runtime/failover.py); None for other steps."""
    if step.kind != "model":
        return None
    profile, _, rest = str(step.output.get("provider") or "").partition("/")
    provider, _, model = rest.partition(":")
    counts = step.output.get("usage") or {}
    return ModelUsage(
        profile=profile,
        provider=provider,
        model=model,
        prompt_tokens=int(counts.get("promptTokens", 0)),
        completion_tokens=int(counts.get("completionTokens", 0)),
    )


ERROR_PREVIEW_CHARS = 500


def _step_event(step: Step, *, summary: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"step": step.name, "index": step.idx, "kind": step.kind}
    if step.kind == "tool":  # the call as it starts, and its result as it ends
        data.update(tool_call_preview(step.output, with_result=summary))
    if summary and step.kind == "model":
        data["provider"] = step.output.get("provider")
        data["toolCalls"] = [c["name"] for c in step.output.get("toolCalls", [])]
        data["usage"] = step.output.get("usage") or {}
    if summary and step.kind == "tool":
        data["isError"] = bool(step.output.get("isError"))
        if data["isError"]:  # the stream says what went wrong, not just that it did
            data["error"] = str(step.output.get("result", ""))[:ERROR_PREVIEW_CHARS]
    if summary and step.kind == "knowledge":
        data["documents"] = step.output.get("documents", [])
    return data
