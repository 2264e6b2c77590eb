"""A turn's writes that wait for its session's lock: the final write behind a cancel, a
queued turn or the session's deletion, and the claim behind a queued turn. What each relies
on: a statement after the lock's statement sees what the lock's holder committed (the final
write's fencing check and open-turn count), and an UPDATE of the session row in a CTE after
the same statement's FOR UPDATE waited works on the committed version (the claim's events).
With the final write's lock statement left out, the first two fail."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from test_claim import _wait_for_a_lock_wait, queued_session

from conftest import Api
from talon.runtime.claim import Claim, ClaimOptions, claim
from talon.runtime.journal import MODEL, Fenced, Lease, Step, complete
from talon.sessions.turn_queue import NewTurn, queue_turns
from talon.store.database import Database

BASE = "/v1/ns/acme/agents/bot/sessions"
OPTIONS = ClaimOptions("worker-a", 30.0, 5)


@pytest.fixture
def session(api: Api, db: Database) -> uuid.UUID:
    return queued_session(api, db)


class Holder:
    """A transaction that locks the session row, does `work(tx)` and commits when released."""

    def __init__(self, db: Database, session: uuid.UUID, work: Any) -> None:
        self.locked = threading.Event()
        self.release = threading.Event()
        self.error: list[BaseException] = []

        def run() -> None:
            try:
                with db.transaction() as tx:
                    tx.execute("SELECT 1 FROM sessions WHERE uid = %s FOR UPDATE", (session,))
                    work(tx)
                    tx.execute("SELECT 1")  # flush what `work` deferred
                    self.locked.set()
                    assert self.release.wait(20)
            except BaseException as exc:
                self.error.append(exc)
                self.locked.set()

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert self.locked.wait(20)
        assert not self.error, self.error

    def commit(self) -> None:
        self.release.set()
        self.thread.join(20)
        assert not self.error, self.error


def behind(db: Database, holder: Holder, work: Any) -> Any:
    """`work()` in a thread that waits for the session's lock `holder` holds, then commits
    the holder; what `work` returned or raised."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    _wait_for_a_lock_wait(db)
    holder.commit()
    thread.join(20)
    assert len(outcome) == 1, outcome
    return outcome[0]


def _final_write(db: Database, lease: Any, acknowledge: Any = None) -> Any:
    with db.transaction() as tx:
        return complete(tx, lease, 2, [_ANSWER], None, [], acknowledge, _answer_step())


def _leased(db: Database, session: uuid.UUID) -> Lease:
    """The session's turn, claimed by worker-a: its lease."""
    claimed = claim(db, session, OPTIONS)
    assert isinstance(claimed, Claim)
    return claimed.lease


def _answer_step() -> Step:
    output = {"content": "late", "toolCalls": [], "provider": "p/openai:m",
              "usage": {"promptTokens": 3, "completionTokens": 4}}  # fmt: skip
    return Step(1, MODEL, "model", "completed", output)


_ANSWER = {"role": "assistant", "content": "late", "tool_calls": None, "tool_call_id": None}


def test_the_final_write_waiting_for_a_cancel_writes_nothing(
    db: Database, session: uuid.UUID
) -> None:
    lease = _leased(db, session)
    holder = Holder(db, session, lambda tx: tx.execute(
        "UPDATE turns SET state = 'cancelled', fencing_token = fencing_token + 1, "
        "lease_owner = NULL WHERE id = %s", (lease.turn_id,)))  # fmt: skip
    assert isinstance(behind(db, holder, lambda: _final_write(db, lease)), Fenced)
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM turn_steps WHERE idx > 0") == 0
        assert tx.scalar("SELECT count(*) FROM model_usage") == 0
        assert tx.scalar("SELECT count(*) FROM messages WHERE role = 'assistant'") == 0
        assert tx.scalar("SELECT state FROM turns") == "cancelled"


def test_the_final_write_waiting_for_a_queued_turn_counts_it(
    db: Database, session: uuid.UUID
) -> None:
    lease = _leased(db, session)
    holder = Holder(db, session, lambda tx: queue_turns(tx, [NewTurn(session, "second")]))
    asked: list[Any] = []

    def acknowledge(tx: Any, when: Any) -> None:
        asked.append(tx.later(f"SELECT ({when.sql}) AS idle", when.params))

    # The turn queued while the final write waited is open.
    assert behind(db, holder, lambda: _final_write(db, lease, acknowledge)) == 1
    assert asked[0].rows == [{"idle": False}]  # so the delivery is not acknowledged
    with db.transaction() as tx:
        ids = [r["id"] for r in tx.all("SELECT id FROM session_events ORDER BY id")]
        completed = tx.one("SELECT data FROM session_events WHERE type = 'turn.completed'")
    assert ids == list(range(1, len(ids) + 1))
    assert completed is not None and completed["data"]["openTurns"] == 1


def test_the_claim_waiting_for_a_queueing_transaction_starts_its_turn_after_its_events(
    db: Database, session: uuid.UUID
) -> None:
    """The claiming statement's `s` waits for the session row; its `ap_s` (UPDATE sessions)
    then has to work on the version the queueing transaction committed, not on its
    snapshot's."""
    holder = Holder(db, session, lambda tx: queue_turns(tx, [NewTurn(session, "second")]))
    claimed = behind(db, holder, lambda: claim(db, session, OPTIONS))
    assert isinstance(claimed, Claim), claimed
    with db.transaction() as tx:
        rows = tx.all("SELECT id, type FROM session_events ORDER BY id")
        last = tx.scalar("SELECT last_event_id FROM sessions")
        steps = tx.scalar("SELECT count(*) FROM turn_steps")
    assert [r["id"] for r in rows] == list(range(1, len(rows) + 1)) and last == len(rows)
    assert [r["type"] for r in rows][-4:] == [
        "turn.started", "step.started", "step.completed", "step.started"
    ]  # fmt: skip
    assert steps == 1


def test_the_final_write_waiting_for_the_sessions_deletion_writes_nothing(
    db: Database, session: uuid.UUID
) -> None:
    lease = _leased(db, session)
    holder = Holder(db, session, lambda tx: tx.execute(
        "DELETE FROM sessions WHERE uid = %s", (session,)))  # fmt: skip
    assert isinstance(behind(db, holder, lambda: _final_write(db, lease)), Fenced)
    with db.transaction() as tx:
        for table in ("turn_steps", "model_usage", "messages", "turns", "session_events"):
            assert tx.scalar(f"SELECT count(*) FROM {table}") == 0, table


def test_a_resumed_turn_whose_answer_was_journaled_completes_without_asking_again(
    api: Api, db: Database, model_server
) -> None:
    """`complete(answer=None)`: the model step that answered is in the journal already (a
    journal written by an earlier release, which committed it on its own)."""
    from test_journal import expire_leases, runner

    from talon.store import turn_steps
    from test_models import RecordingTools, _agent_with_policy, policy

    _agent_with_policy(api, policy(model_server.url, "primary"))
    api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "hello"})
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid FROM sessions WHERE id = 's1'")
    claimed = claim(db, uid, OPTIONS)
    assert isinstance(claimed, Claim)
    with db.transaction() as tx:
        assert turn_steps.renew_and_write(tx, claimed.lease, _answer_step())
    expire_leases(db)
    assert runner(db, RecordingTools(), "worker-b").drive(uid) is None
    assert model_server.requests == []  # not asked again
    messages = api.ok("GET", f"{BASE}/s1/messages")["items"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "hello"),
                                                              ("assistant", "late")]  # fmt: skip
    with db.transaction() as tx:
        assert tx.scalar("SELECT state FROM turns") == "completed"
        assert tx.scalar("SELECT count(*) FROM turn_steps WHERE kind = 'model'") == 1
