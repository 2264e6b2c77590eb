"""Runs a session's turns as journaled steps: load-knowledge, call-model, call-<tool>, ...,
write-next-message. A redelivered turn resumes after its last completed step."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from talon.runtime import context as ctx
from talon.runtime.deltas import DeltaBuffer
from talon.runtime.failover import (
    PolicyError,
    build_clients,
    complete_with_policy,
    policy_credentials,
)
from talon.runtime.journal import (
    KNOWLEDGE,
    MODEL,
    WRITE,
    Fenced,
    Heartbeat,
    Lease,
    Step,
    load,
    record,
    renew,
)
from talon.runtime.providers.base import ModelRequest
from talon.runtime.tools.base import AgentContext, ToolSource
from talon.sessions import events
from talon.store.database import Database, Tx, jsonb
from talon.tenancy.tenant_policy import TenancyPolicy

log = logging.getLogger(__name__)

INTERRUPTED = (
    "error: the worker running this tool call stopped before it returned; the call was not "
    "retried because it may already have taken effect"
)


@dataclass(frozen=True)
class RunnerSettings:
    worker_id: str
    lease_seconds: float = 30.0
    max_attempts: int = 5  # deliveries of one turn before it is failed
    max_rounds: int = 8  # model calls per turn
    demo_fallback: bool = False


@dataclass(frozen=True)
class _Claim:
    lease: Lease
    turn: dict[str, Any]
    agent: AgentContext
    journal: dict[int, Step]
    history: list[dict[str, Any]]


_AGAIN = object()  # the head turn was settled during the claim; look for the next one

# Claiming a session's head turn, in one statement: lock the session row, then its oldest
# open turn (the order every writer uses), and take that turn unless another worker's lease
# on it is live or it has used up its attempts; with the agent's resource row. `id` is NULL
# when nothing was taken (`head_*` say why).
_CLAIM_SQL = """
WITH s AS (
    SELECT uid, namespace, id, agent FROM sessions WHERE uid = %s FOR UPDATE
), head AS (
    SELECT t.id, t.state, t.attempts, t.lease_expires_at,
           COALESCE(t.state = 'running' AND t.lease_expires_at > now(), false) AS leased
    FROM turns t JOIN s ON t.session_uid = s.uid
    WHERE t.state IN ('queued', 'running') ORDER BY t.seq LIMIT 1 FOR UPDATE OF t
), claimed AS (
    UPDATE turns SET state = 'running', fencing_token = fencing_token + 1, lease_owner = %s,
           lease_expires_at = now() + make_interval(secs => %s), attempts = turns.attempts + 1,
           started_at = COALESCE(started_at, now())
    FROM head WHERE turns.id = head.id AND NOT head.leased AND head.attempts < %s
    RETURNING turns.id, turns.seq, turns.attempts, turns.fencing_token, turns.started_at
)
SELECT s.namespace, s.id AS session_id, s.agent,
       head.id AS head_id, head.attempts AS head_attempts, head.leased AS head_leased,
       head.lease_expires_at AS head_lease,
       claimed.id, claimed.seq, claimed.attempts, claimed.fencing_token, claimed.started_at,
       r.name IS NOT NULL AS agent_found, r.labels AS agent_labels, r.status AS agent_status
FROM s LEFT JOIN head ON true LEFT JOIN claimed ON true
LEFT JOIN resources r ON r.kind = 'Agent' AND r.namespace = s.namespace AND r.name = s.agent
"""


class TurnRunner:
    def __init__(
        self, db: Database, tools: ToolSource, settings: RunnerSettings, tenancy: TenancyPolicy
    ) -> None:
        self.db = db
        self.tools = tools
        self.settings = settings
        self.tenancy = tenancy
        self._client_cache: dict[str, list[Any]] = {}
        self._cache_lock = threading.Lock()

    def _clients(self, namespace: str, model_policy: dict[str, Any]) -> list[Any]:
        """Model clients per namespace and policy (grants are per namespace), reused across
        turns: building one costs an HTTP client and a TLS context, far more than a
        zero-latency model call."""
        platform_env = self.tenancy.grants.platform_key_env
        key = "|".join((namespace, json.dumps(model_policy, sort_keys=True),
                        policy_credentials(model_policy, platform_env)))  # fmt: skip
        with self._cache_lock:
            clients = self._client_cache.get(key)
            if clients is None:
                if len(self._client_cache) > 256:
                    self._client_cache.clear()
                clients = build_clients(
                    model_policy, namespace=namespace, tenancy=self.tenancy,
                    demo_fallback=self.settings.demo_fallback,
                )  # fmt: skip
                self._client_cache[key] = clients
            return clients

    def forget_clients(self) -> None:
        with self._cache_lock:
            self._client_cache.clear()

    def drive(
        self, session_uid: uuid.UUID, *, on_idle: Callable[[Tx], None] | None = None
    ) -> datetime | None:
        """Run the session's turns until none is runnable. If another worker holds the head
        turn, return when its lease expires (look again then); otherwise None. `on_idle(tx)`
        runs inside the final write that leaves the session with no open turn (the broker
        acknowledges its delivery there)."""
        while True:
            claimed = self._claim(session_uid)
            if claimed is _AGAIN:
                continue
            if claimed is None or isinstance(claimed, datetime):
                return claimed
            assert isinstance(claimed, _Claim)
            if not self._run(claimed, on_idle):
                return None  # the final write saw no other open turn: nothing to claim

    # -- claiming ----------------------------------------------------------------------------

    def _claim(self, session_uid: uuid.UUID) -> _Claim | datetime | object | None:
        with self.db.transaction() as tx:
            while True:
                row = tx.one(
                    _CLAIM_SQL,
                    (session_uid, self.settings.worker_id, self.settings.lease_seconds,
                     self.settings.max_attempts),
                )  # fmt: skip
                if row is None or row["head_id"] is None:
                    return None  # no such session, or nothing open
                if row["id"] is not None:
                    break
                if row["head_leased"]:
                    return row["head_lease"]  # another worker runs it
                _finish_failed(
                    tx, session_uid, row["head_id"], "too_many_attempts",
                    f"gave up after {row['head_attempts']} attempts",
                )  # fmt: skip
            session = {"namespace": row["namespace"], "id": row["session_id"],
                       "agent": row["agent"]}  # fmt: skip
            turn = row
            lease = Lease(turn["id"], session_uid, int(turn["fencing_token"]),
                          self.settings.lease_seconds)  # fmt: skip
            started = [("turn.started", {"attempt": turn["attempts"],
                                         "resumed": turn["attempts"] > 1})]  # fmt: skip
            # Steps are only written under a claim: a turn claimed for the first time has none.
            journal = {} if turn["attempts"] == 1 else {s.idx: s for s in load(tx, turn["id"])}
            try:
                found = {"labels": row["agent_labels"], "status": row["agent_status"]}
                agent = ctx.agent_from_row(session, found if row["agent_found"] else None)
            except ctx.TurnFailure as failure:
                events.append(tx, session_uid, started, turn["id"])
                _finish_failed(tx, session_uid, turn["id"], failure.code, failure.message)
                return _AGAIN
            history = ctx.history(tx, session_uid, int(turn["seq"]))
            if 0 not in journal:
                # Loading knowledge is a quick read: it completes inside the claim, one commit.
                knowledge = ctx.load_knowledge(tx, agent.namespace, ctx.turn_input(history))
                journal[0] = Step(0, KNOWLEDGE, "knowledge", "completed", knowledge)
                announce = ("step.started", {"step": KNOWLEDGE, "index": 0, "kind": "knowledge"})
                next_step = Step(1, MODEL, "model", "started", {})
                # The lease was taken a moment ago in this transaction: no renewal needed.
                record(
                    tx, lease, journal[0], next_step, before=[*started, announce], renewing=False
                )
            else:
                events.append(tx, session_uid, started, turn["id"])
            return _Claim(lease, turn, agent, journal, history)

    # -- running -----------------------------------------------------------------------------

    def _run(self, claim: _Claim, on_idle: Callable[[Tx], None] | None = None) -> bool:
        """Run the claimed turn; False when it completed and left no open turn behind (so
        `drive` need not look again)."""
        lease, turn = claim.lease, claim.turn
        heartbeat = Heartbeat(self.db, lease)
        agent, journal, history = claim.agent, claim.journal, claim.history
        try:
            timeout = float(agent.effective["modelPolicy"].get("turnTimeoutSeconds", 300))
            started_at = turn["started_at"].timestamp()
            deadline = time.monotonic() + max(0.0, started_at + timeout - time.time())
            return self._steps(lease, agent, journal, history, deadline, heartbeat, on_idle)
        except Fenced:
            log.info("turn %s: lost the lease or was cancelled; stopping", turn["id"])
        except ctx.TurnFailure as failure:
            self._fail(lease, failure.code, failure.message)
        except PolicyError as exc:
            self._fail(lease, "model_unavailable", str(exc), attempts=exc.attempts)
        finally:
            heartbeat.stop()
        return True

    def _steps(
        self,
        lease: Lease,
        agent: AgentContext,
        journal: dict[int, Step],
        history: list[dict[str, Any]],
        deadline: float,
        heartbeat: Heartbeat,
        on_idle: Callable[[Tx], None] | None,
    ) -> bool:
        knowledge_step = journal[0]  # completed during the claim
        messages = [
            {"role": "system", "content": ctx.system_prompt(agent, knowledge_step.output)},
            *history,
        ]
        toolset = self.tools.tools_for(agent)
        tools = toolset.tools
        # Said once, with the first model step: which tool sources this turn runs without.
        notices: list[tuple[str, dict[str, Any]]] = []
        if toolset.unavailable:
            notices.append(("tools.unavailable", {"sources": toolset.unavailable}))
        clients = self._clients(agent.namespace, agent.effective["modelPolicy"])
        written: list[dict[str, Any]] = []  # messages this turn adds to the session
        idx = 1
        for _ in range(self.settings.max_rounds):
            heartbeat.check()
            if time.monotonic() >= deadline:
                raise ctx.TurnFailure("deadline_exceeded", "the turn ran past its deadline")
            step = journal.get(idx)
            # This model step's record, unsaved: (tx, defer_events) -> the deferred events.
            pending: Callable[..., list[tuple[str, dict[str, Any]]]] | None = None
            if step is None or step.state != "completed":
                deltas = DeltaBuffer(self.db, lease, idx)
                response = complete_with_policy(
                    clients,
                    agent.effective["modelPolicy"].get("retry", {}),
                    ModelRequest(messages, tools, deadline - time.monotonic(), deltas.add),
                    deadline=deadline,
                    on_attempt_failed=deltas.attempt_failed,
                )
                output = {
                    "content": response.content,
                    "toolCalls": [c.to_dict() for c in response.tool_calls],
                    "provider": response.provider,
                    "usage": response.usage,
                }
                step = Step(idx, MODEL, "model", "completed", output)
                calls = output["toolCalls"]
                following = (
                    Step(idx + 1, f"call-{calls[0]['name']}", "tool", "started", {"call": calls[0]})
                    if calls
                    else None
                )
                if following is not None:
                    journal[idx + 1] = following
                before = notices + deltas.drain()
                pending = partial(_record_model, lease, step, following, before)
                notices = []
            calls = step.output.get("toolCalls", [])
            assistant = ctx.to_chat("assistant", step.output.get("content", ""), calls, None)
            messages.append(assistant)
            written.append({"role": "assistant", "content": step.output.get("content", ""),
                            "tool_calls": calls or None, "tool_call_id": None,
                            "provider": step.output.get("provider")})  # fmt: skip
            idx += 1
            if not calls:
                # The answer: the model step and the turn's messages commit together (a crash
                # before this commit asks the model again, exactly as with two commits).
                with self.db.transaction() as tx:
                    recorded = []
                    if pending is not None:
                        recorded = pending(tx, defer_events=True)  # renews the lease
                    more = self._write_in(
                        tx, lease, written, idx, renewed=pending is not None, earlier=recorded
                    )
                    if not more and on_idle is not None:
                        on_idle(tx)
                    return more
            if pending is not None:
                with self.db.transaction() as tx:
                    pending(tx)
            for position, call in enumerate(calls):
                heartbeat.check()
                result = self._tool_step(lease, agent, journal, idx, call, calls, position)
                messages.append(ctx.to_chat("tool", result, None, call["id"]))
                written.append({"role": "tool", "content": result, "tool_calls": None,
                                "tool_call_id": call["id"]})  # fmt: skip
                idx += 1
        raise ctx.TurnFailure(
            "too_many_rounds", f"the model asked for tools {self.settings.max_rounds} times"
        )

    def _tool_step(
        self,
        lease: Lease,
        agent: AgentContext,
        journal: dict[int, Step],
        idx: int,
        call: dict[str, Any],
        calls: list[dict[str, Any]],
        position: int,
    ) -> str:
        step = journal.get(idx)
        if step is not None and step.state in ("completed", "failed"):
            return str(step.output.get("result", ""))
        name = f"call-{call['name']}"
        if step is not None and step.state == "started" and step.output.get("ran"):
            result, is_error = INTERRUPTED, True
        else:
            with self.db.transaction() as tx:
                # Mark the call as begun under this lease before any side effect happens.
                renew(tx, lease)
                tx.execute(
                    "INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, "
                    "fencing_token) VALUES (%s, %s, %s, 'tool', 'started', %s::jsonb, %s) "
                    "ON CONFLICT (turn_id, idx) DO UPDATE SET output = EXCLUDED.output, "
                    "fencing_token = EXCLUDED.fencing_token",
                    (lease.turn_id, idx, name, jsonb({"call": call, "ran": True}), lease.token),
                )
            try:
                arguments = json.loads(call.get("arguments") or "{}")
                if not isinstance(arguments, dict):
                    raise ValueError("arguments must be a JSON object")
            except ValueError as exc:
                result, is_error = f"error: invalid tool arguments: {exc}", True
            else:
                outcome = self.tools.call(agent, call["name"], arguments)
                result, is_error = outcome.content, outcome.is_error
        done = Step(idx, name, "tool", "completed", {"call": call, "result": result,
                                                       "isError": is_error})  # fmt: skip
        if position + 1 < len(calls):
            nxt = calls[position + 1]
            following: Step | None = Step(idx + 1, f"call-{nxt['name']}", "tool", "started",
                                          {"call": nxt})  # fmt: skip
        else:
            following = Step(idx + 1, MODEL, "model", "started", {})
        with self.db.transaction() as tx:
            record(tx, lease, done, following)
        journal[idx] = done
        return result

    def _write_in(
        self,
        tx: Tx,
        lease: Lease,
        written: list[dict[str, Any]],
        idx: int,
        *,
        renewed: bool,
        earlier: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> bool:
        """The final step: the turn's messages and its completion, in the caller's
        transaction, after `earlier` events (appended together with this step's). Returns
        whether other turns of the session are still open."""
        if not renewed:
            renew(tx, lease)
        new_events: list[tuple[str, dict[str, Any]]] = [
            *(earlier or []),
            ("step.started", {"step": WRITE, "index": idx, "kind": "write"}),
        ]
        provider = None
        for message in written:
            seq = _insert_message(tx, lease, message)
            provider = message.get("provider") or provider
            if message["role"] == "assistant" and message["content"]:
                new_events.append(
                    (
                        "message.created",
                        {"seq": seq, "role": "assistant", "content": message["content"]},
                    )
                )
        # The write step, the turn's completion and the count of the session's other open
        # turns (the session row is locked, so it is the count at commit) in one statement.
        params = (
            lease.turn_id, idx, WRITE, jsonb({"messages": len(written)}), lease.token,
            provider, lease.turn_id, lease.session_uid, lease.turn_id,
        )  # fmt: skip
        remaining = int(
            tx.scalar(
                "WITH step AS (INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, "
                "  fencing_token, completed_at) "
                "  VALUES (%s, %s, %s, 'write', 'completed', %s::jsonb, %s, now())), "
                "done AS (UPDATE turns SET state = 'completed', finished_at = now(), "
                "  provider = %s, lease_owner = NULL, lease_expires_at = NULL WHERE id = %s) "
                "SELECT count(*) FROM turns WHERE session_uid = %s AND id <> %s "
                "AND state IN ('queued', 'running')",
                params,
            )
        )
        new_events.append(("step.completed", {"step": WRITE, "index": idx, "kind": "write"}))
        new_events.append(("turn.completed", {"provider": provider, "openTurns": remaining}))
        events.append(tx, lease.session_uid, new_events, lease.turn_id)
        return remaining > 0

    def _fail(self, lease: Lease, code: str, message: str, **extra: Any) -> None:
        try:
            with self.db.transaction() as tx:
                renew(tx, lease)
                _finish_failed(tx, lease.session_uid, lease.turn_id, code, message, **extra)
        except Fenced:
            log.info("turn %s: fenced while recording its failure", lease.turn_id)


def _insert_message(tx: Tx, lease: Lease, message: dict[str, Any]) -> int:
    """Number the message in its session and insert it; returns its seq."""
    params = (
        lease.session_uid, lease.session_uid, message["role"], message["content"],
        jsonb(message["tool_calls"]) if message["tool_calls"] else None,
        message["tool_call_id"], lease.turn_id,
    )  # fmt: skip
    return int(
        tx.scalar(
            "WITH s AS (UPDATE sessions SET last_message = last_message + 1 WHERE uid = %s "
            "  RETURNING last_message) "
            "INSERT INTO messages (session_uid, seq, role, content, tool_calls, tool_call_id, "
            "  turn_id) SELECT %s::uuid, s.last_message, %s, %s, %s::jsonb, %s, %s::uuid "
            "FROM s RETURNING seq",
            params,
        )
    )


def _finish_failed(
    tx: Tx, session_uid: uuid.UUID, turn_id: uuid.UUID, code: str, message: str, **extra: Any
) -> None:
    error = {"code": code, "message": message, **extra}
    tx.execute(
        "UPDATE turns SET state = 'failed', finished_at = now(), error = %s::jsonb, "
        "lease_owner = NULL, lease_expires_at = NULL WHERE id = %s",
        (jsonb(error), turn_id),
    )
    remaining = events.open_turns(tx, session_uid)
    failed = {"code": code, "message": message, "openTurns": remaining}
    events.append(tx, session_uid, [("turn.failed", failed)], turn_id)
    log.warning("turn %s failed: %s: %s", turn_id, code, message)


def _record_model(
    lease: Lease,
    step: Step,
    following: Step | None,
    before: list[tuple[str, dict[str, Any]]],
    tx: Tx,
    *,
    defer_events: bool = False,
) -> list[tuple[str, dict[str, Any]]]:
    return record(tx, lease, step, following, before=before, defer_events=defer_events)
