"""Runs a session's turns as journaled steps: load-knowledge, call-model, call-<tool>, ...,
write-next-message. A redelivered turn resumes after its last completed step.

Claiming a turn is `claim.py`; every step is written through the journal (`journal.py`, the
owner of `turn_steps`) and the turn's messages through the sessions layer
(`sessions/messages.py`): this module decides what runs next, and writes no table itself.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from talon.broker.base import Condition, DeliveryClaim
from talon.runtime import context as ctx
from talon.runtime import turn_telemetry
from talon.runtime.claim import Busy, Claim, ClaimOptions, NotTaken, claim, finish_failed
from talon.runtime.deltas import DeltaBuffer
from talon.runtime.failover import (
    PolicyError,
    build_clients,
    complete_with_policy,
    policy_credentials,
)
from talon.runtime.heartbeats import Heartbeat, Heartbeats
from talon.runtime.history_cache import HistoryCache
from talon.runtime.journal import (
    MODEL,
    WRITE,
    Fenced,
    Lease,
    Step,
    begin_tool_call,
    complete,
    record,
    renew,
)
from talon.runtime.knowledge_hints import WithoutKnowledge
from talon.runtime.providers.base import ModelRequest
from talon.runtime.tools.base import AgentContext, ToolSource, turn_scope
from talon.store.database import Database, Tx
from talon.telemetry import tracing
from talon.tenancy.tenant_policy import TenancyPolicy

log = logging.getLogger(__name__)
# Acknowledges a delivery in a turn's final write if a condition holds (`drive`).
OnIdle = Callable[[Tx, Condition], None]

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
        self._heartbeats = Heartbeats(db)
        self._history = HistoryCache()  # a claim reads only what its session's copy lacks
        self._without_knowledge = WithoutKnowledge()  # and no knowledge it will not need

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
        self,
        session_uid: uuid.UUID,
        *,
        on_idle: OnIdle | None = None,
        first: Callable[[Tx], DeliveryClaim] | None = None,
    ) -> Busy | NotTaken | None:
        """Run the session's turns until none is runnable. If another live worker holds the
        head turn, return who and until when (look again then, or once it dies); otherwise
        None. `on_idle(tx, when)` is called in each turn's final write, before its last
        statement: the broker acknowledges its delivery there if `when` holds (the turn
        leaves the session with no open turn). `first(tx)` claims the broker's delivery in the
        first claim's transaction (see `claim.claim`); if it did not take, NotTaken and
        nothing done."""
        options = ClaimOptions(
            self.settings.worker_id,
            self.settings.lease_seconds,
            self.settings.max_attempts,
            history=self._history,
            without_knowledge=self._without_knowledge,
        )
        while True:
            claimed = claim(self.db, session_uid, options, first)
            first = None
            if not isinstance(claimed, Claim):
                return claimed
            with turn_telemetry.attempt(self.db, claimed):
                if not self._run(claimed, on_idle):
                    return None  # the final write saw no other open turn: nothing to claim

    # -- running -----------------------------------------------------------------------------

    def _run(self, claimed: Claim, on_idle: OnIdle | None = None) -> bool:
        """Run the claimed turn; False when it completed and left no open turn behind (so
        `drive` need not look again)."""
        lease, turn = claimed.lease, claimed.turn
        heartbeat = self._heartbeats.start(lease)
        agent, journal, history = claimed.agent, claimed.journal, claimed.history
        try:
            timeout = float(agent.effective["modelPolicy"].get("turnTimeoutSeconds", 300))
            started_at = turn["started_at"].timestamp()
            deadline = time.monotonic() + max(0.0, started_at + timeout - time.time())
            with turn_scope(self.tools):  # e.g. the turn's MCP sessions, ended with it
                more = self._steps(lease, agent, journal, history, deadline, heartbeat, on_idle)
            turn_telemetry.ended(claimed, "completed")
            return more
        except Fenced:
            log.info("turn %s: lost the lease or was cancelled; stopping", turn["id"])
        except ctx.TurnFailure as failure:
            self._fail(lease, failure.code, failure.message)
            turn_telemetry.ended(claimed, "failed")
        except PolicyError as exc:
            self._fail(lease, "model_unavailable", str(exc), attempts=exc.attempts)
            turn_telemetry.ended(claimed, "failed")
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
        on_idle: OnIdle | None,
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
            fresh = step is None or step.state != "completed"  # not journaled yet
            before: list[tuple[str, dict[str, Any]]] = []  # a fresh step's events before its own
            following: Step | None = None  # the tool step a fresh step's calls start with
            if step is None or step.state != "completed":
                deltas = DeltaBuffer(self.db, lease, idx)
                with turn_telemetry.step(MODEL, "model", **{"talon.step.index": idx}) as span:
                    response = complete_with_policy(
                        clients,
                        agent.effective["modelPolicy"].get("retry", {}),
                        ModelRequest(messages, tools, deadline - time.monotonic(), deltas.add),
                        deadline=deadline,
                        on_attempt_failed=turn_telemetry.noting_failures(deltas.attempt_failed),
                    )
                    turn_telemetry.model_answered(span, response)
                output: dict[str, Any] = {
                    "content": response.content,
                    "toolCalls": [c.to_dict() for c in response.tool_calls],
                    "provider": response.provider,
                    "usage": response.usage,
                }
                step = Step(idx, MODEL, "model", "completed", output)
                calls = output["toolCalls"]
                if calls:
                    following = Step(idx + 1, f"call-{calls[0]['name']}", "tool", "started",
                                     {"call": calls[0]})  # fmt: skip
                    journal[idx + 1] = following
                before = notices + deltas.drain()
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
                with turn_telemetry.step(WRITE, "write"), self.db.transaction() as tx:
                    return self._write_in(
                        tx, lease, written, idx, answer=step if fresh else None,
                        earlier=before, on_idle=on_idle,
                    )  # fmt: skip
            if fresh:
                with self.db.transaction() as tx:
                    record(tx, lease, step, following, before=before)
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
                begin_tool_call(tx, lease, idx, name, call)
            try:
                arguments = json.loads(call.get("arguments") or "{}")
                if not isinstance(arguments, dict):
                    raise ValueError("arguments must be a JSON object")
            except ValueError as exc:
                result, is_error = f"error: invalid tool arguments: {exc}", True
            else:
                with turn_telemetry.tool_call(idx, call["name"]) as span:
                    outcome = self.tools.call(agent, call["name"], arguments)
                    turn_telemetry.tool_answered(span, call["name"], outcome.is_error)
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
        answer: Step | None,
        earlier: list[tuple[str, dict[str, Any]]],
        on_idle: OnIdle | None,
    ) -> bool:
        """The final step: the model step `answer` (None: journaled already), the turn's
        messages and its completion, after `earlier` events (appended together with this
        step's), as the caller's transaction's last statement. Returns whether other turns
        of the session are still open."""
        provider = None
        for message in written:
            provider = message.get("provider") or provider
        return complete(tx, lease, idx, written, provider, earlier, on_idle, answer) > 0

    def _fail(self, lease: Lease, code: str, message: str, **extra: Any) -> None:
        tracing.fail_current(f"{code}: {message}"[:300])
        try:
            with self.db.transaction() as tx:
                renew(tx, lease)
                finish_failed(tx, lease.session_uid, lease.turn_id, code, message, **extra)
        except Fenced:
            log.info("turn %s: fenced while recording its failure", lease.turn_id)
