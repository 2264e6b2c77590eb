"""A turn's claim and start: the usual turn is claimed and started by one statement batch
with its COMMIT, and the database decides whether it is the usual turn; every other turn is
started in a transaction of its own that first checks the lease still holds."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import samples
from conftest import Api, raw_connection, row_counts
from talon.broker.outbox import DISPATCH_TOPIC
from talon.broker.postgres import PostgresBroker, _Unclaimed
from talon.runtime import claim as claiming
from talon.runtime import context as ctx
from talon.runtime.claim import Busy, Claim, ClaimOptions, NotTaken, claim
from talon.store.database import Database
from talon.store.liveness import OwnerLock

BASE = "/v1/ns/acme/agents/bot/sessions"
OPTIONS = ClaimOptions("worker-a", 30.0, 5)


def queued_session(api: Api, db: Database) -> uuid.UUID:
    """acme's agent `bot`, its session s1 with one message queued: the session's uid."""
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    api.ok("POST", BASE, 201, json={"id": "s1"})
    api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "hello"})
    with db.transaction() as tx:
        return tx.scalar("SELECT uid FROM sessions WHERE id = 's1'")


@pytest.fixture
def session(api: Api, db: Database) -> uuid.UUID:
    return queued_session(api, db)


def _written(db: Database) -> dict[str, Any]:
    with db.transaction() as tx:
        return {
            "steps": tx.all("SELECT idx, kind, state, output FROM turn_steps ORDER BY idx"),
            "events": [r["type"] for r in tx.all("SELECT type FROM session_events ORDER BY id")],
        }


def _noting_leases(monkeypatch: pytest.MonkeyPatch, what: Callable[[Any], bool]) -> list[bool]:
    """`what(leased)` for each claim that leased a turn (`claim._Leased`), in order."""
    said: list[bool] = []
    take = claiming._take

    def noting(*args: Any, **kwargs: Any) -> Any:
        taken = take(*args, **kwargs)
        if isinstance(taken, claiming._Leased):
            said.append(what(taken))
        return taken

    monkeypatch.setattr(claiming, "_take", noting)
    return said


def _started_by_the_claim(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each claim's own statement started its turn (else `_begin` did)."""
    return _noting_leases(monkeypatch, lambda leased: leased.started)


def test_the_usual_turn_is_started_by_its_claim(
    db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _started_by_the_claim(monkeypatch)
    claimed = claim(db, session, OPTIONS)
    assert isinstance(claimed, Claim) and started == [True]
    written = _written(db)
    assert written["steps"] == [{"idx": 0, "kind": "knowledge", "state": "completed",
                                 "output": {"documents": [], "context": ""}}]  # fmt: skip
    assert written["events"][-4:] == [
        "turn.started", "step.started", "step.completed", "step.started"
    ]  # fmt: skip
    assert claimed.journal[0].output == written["steps"][0]["output"]
    assert claimed.history[-1] == {"role": "user", "content": "hello"}


def test_a_worker_claiming_a_turn_it_holds_already_starts_nothing(
    db: Database, session: uuid.UUID
) -> None:
    """The start depends on this very transaction having claimed the turn, not on who holds
    it: the worker that holds the lease finds the turn busy and writes nothing more (a start
    keyed on the lease's owner would journal the turn's start twice)."""
    alive = OwnerLock(db.raw_connect, OPTIONS.worker_id)  # its lease holds while it lives
    try:
        assert alive.wait_held(10)
        assert isinstance(claim(db, session, OPTIONS), Claim)
        before = _written(db)
        assert isinstance(claim(db, session, OPTIONS), Busy)
        assert _written(db) == before
    finally:
        alive.close()


def test_a_namespace_with_knowledge_starts_its_turn_after_the_claim(
    api: Api, db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The knowledge step's output is known beforehand only without knowledge: with it,
    Python retrieves and journals it in a second transaction."""
    api.ok("POST", "/v1/ns/acme/knowledge", 201,
           json=samples.knowledge("acme", content="# Greetings\nSay hello back."))  # fmt: skip
    started = _started_by_the_claim(monkeypatch)
    claimed = claim(db, session, OPTIONS)
    assert isinstance(claimed, Claim) and started == [False]
    (step,) = _written(db)["steps"]
    assert step["output"]["documents"][0]["name"] == "faq"
    assert claimed.journal[0].output == step["output"]
    assert _written(db)["events"][-4:] == [
        "turn.started", "step.started", "step.completed", "step.started"
    ]  # fmt: skip


def test_a_turn_whose_agent_does_not_resolve_is_failed_after_the_claim(
    db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    with db.transaction() as tx:
        tx.execute(
            "UPDATE resources SET status = status || '{\"phase\": \"Failed\"}' WHERE kind = 'Agent'"
        )
    started = _started_by_the_claim(monkeypatch)
    assert claim(db, session, OPTIONS) is None  # failed, and nothing else is open
    assert started == [False]
    written = _written(db)
    assert written["steps"] == []
    assert written["events"][-2:] == ["turn.started", "turn.failed"]


def test_a_turn_cancelled_between_its_claim_and_its_start_is_not_started(
    api: Api, db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim of a turn it could not start commits on its own: the transaction starting
    the turn renews the lease first, and a turn cancelled in between is left alone."""
    api.ok("POST", "/v1/ns/acme/knowledge", 201, json=samples.knowledge("acme"))
    begin = claiming._begin

    def cancelled_first(*args: Any, **kwargs: Any) -> Any:
        api.ok("POST", f"{BASE}/s1/cancel")
        return begin(*args, **kwargs)

    monkeypatch.setattr(claiming, "_begin", cancelled_first)
    assert claim(db, session, OPTIONS) is None
    written = _written(db)
    assert written["steps"] == []
    assert "turn.started" not in written["events"]
    assert written["events"][-1] == "turn.cancelled"


def test_a_resumed_turn_is_not_started_again_by_its_claim(
    db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn taken over from a dead worker has its knowledge step: the claim's statement
    starts first attempts only, and the resumed turn just says it started again."""
    assert isinstance(claim(db, session, ClaimOptions("a-worker-that-died", 30.0, 5)), Claim)
    before = _written(db)
    started = _started_by_the_claim(monkeypatch)
    resumed = claim(db, session, OPTIONS)
    assert isinstance(resumed, Claim) and started == [False]
    assert resumed.turn["attempts"] == 2 and 0 in resumed.journal
    after = _written(db)
    assert after["steps"] == before["steps"]
    assert after["events"] == [*before["events"], "turn.started"]


def test_a_turn_whose_agent_resolves_during_the_claim_runs(
    api: Api, db: Database, session: uuid.UUID, database_url: str
) -> None:
    """The claiming statement reads the agent row as of its start, and starts the usual turn
    only if that row resolves. Here it read the agent failing, and the agent resolved while
    the claim's round trip was still being answered (its window's read waits): the turn is
    not failed on the row the statement read (failing cannot be undone), but started by the
    claim's second transaction with the agent as it is then."""
    one = Database(db._connect, 1)  # one connection, its statements prepared by a first claim
    try:
        assert isinstance(claim(one, session, OPTIONS), Claim)
        with db.transaction() as tx:
            tx.execute("UPDATE turns SET state = 'completed', lease_owner = NULL, "
                       "lease_expires_at = NULL")  # fmt: skip
        api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "again"})
        _set_phase(db, "Failed")
        blocker = raw_connection(database_url)
        blocker.cursor().execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        outcome: list[Any] = []
        runner = threading.Thread(target=lambda: outcome.append(_claiming(one, session)))
        runner.start()
        _wait_for_a_lock_wait(db)  # the claiming statement ran, the window's read waits
        _set_phase(db, "Resolved", connection=blocker)  # commits, releasing the lock
        blocker.close()
        runner.join(10)
    finally:
        one.close()
    (claimed,) = outcome
    assert isinstance(claimed, Claim), claimed
    assert claimed.turn["seq"] == 2 and claimed.agent.agent == "bot"
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM turns WHERE state = 'failed'") == 0
        steps = tx.all("SELECT idx, kind FROM turn_steps WHERE turn_id = %s", (claimed.turn["id"],))
    assert steps == [{"idx": 0, "kind": "knowledge"}]  # journaled by the second transaction


def test_a_failed_start_gives_the_turn_up_at_once(
    api: Api, db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim of a turn it could not start has committed: if starting it fails (a
    database error, knowledge that cannot be indexed), the live worker gives the lease up,
    so the retried delivery claims the turn at once (as its next attempt) rather than
    finding it busy until the lease runs out."""
    api.ok("POST", "/v1/ns/acme/knowledge", 201,
           json=samples.knowledge("acme", content="# Greetings\nSay hello back."))  # fmt: skip
    alive = OwnerLock(db.raw_connect, OPTIONS.worker_id)
    try:
        assert alive.wait_held(10)
        retrieve = ctx.knowledge_from

        def failing(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the knowledge index is unavailable")

        monkeypatch.setattr(ctx, "knowledge_from", failing)
        with pytest.raises(RuntimeError):
            claim(db, session, OPTIONS)
        monkeypatch.setattr(ctx, "knowledge_from", retrieve)
        again = claim(db, session, OPTIONS)
    finally:
        alive.close()
    assert isinstance(again, Claim), again
    assert again.turn["attempts"] == 2
    assert _written(db)["steps"][0]["output"]["documents"][0]["name"] == "faq"


def test_a_delivery_claimed_with_a_turn_started_after_the_claim_holds(
    api: Api, db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notified row's claim commits with the turn's claim even when the turn is started in
    the second transaction."""
    api.ok("POST", "/v1/ns/acme/knowledge", 201, json=samples.knowledge("acme"))
    with db.transaction() as tx:
        row_id = tx.scalar("SELECT id FROM outbox WHERE topic = %s", (DISPATCH_TOPIC,))
    delivery = _Unclaimed(PostgresBroker(db), row_id, set(), threading.Condition())
    started = _started_by_the_claim(monkeypatch)
    assert isinstance(claim(db, session, OPTIONS, delivery), Claim)
    assert delivery.taken is True and started == [False]
    with db.transaction() as tx:
        assert tx.scalar("SELECT attempts FROM outbox WHERE id = %s", (row_id,)) == 1
    assert len(_written(db)["steps"]) == 1


def test_a_claim_whose_delivery_another_worker_took_waits_for_nothing(
    db: Database, session: uuid.UUID, database_url: str
) -> None:
    """A worker that lost the race for a notified row neither waits for the winner's lock
    on the session nor writes anything: its claiming statement depends on the row's claim
    from its first row on."""
    with db.transaction() as tx:
        row_id = tx.scalar("SELECT id FROM outbox WHERE topic = %s", (DISPATCH_TOPIC,))
        tx.execute("UPDATE outbox SET attempts = 1, claimed_until = now() + interval '1 minute'")
    winner = raw_connection(database_url)
    try:
        winner.cursor().execute("SELECT uid FROM sessions WHERE uid = %s FOR UPDATE", (session,))
        loser = _Unclaimed(PostgresBroker(db), row_id, set(), threading.Condition())
        outcome: list[Any] = []
        claiming = threading.Thread(
            target=lambda: outcome.append(claim(db, session, OPTIONS, loser))
        )
        claiming.start()
        claiming.join(5)
        assert outcome and isinstance(outcome[0], NotTaken)  # not waiting for the lock
    finally:
        winner.rollback()  # the lock goes (a claim that waited for it ends now)
        winner.close()
        claiming.join(10)
    assert _written(db)["steps"] == []


def _claiming(db: Database, session: uuid.UUID) -> Any:
    try:
        return claim(db, session, OPTIONS)
    except Exception as exc:
        return exc


def _set_phase(db: Database, phase: str, connection: Any = None) -> None:
    sql = "UPDATE resources SET status = status || %s::jsonb WHERE kind = 'Agent'"
    params = (f'{{"phase": "{phase}"}}',)
    if connection is not None:
        connection.cursor().execute(sql, params)
        connection.commit()
        return
    with db.transaction() as tx:
        tx.execute(sql, params)


def _wait_for_a_lock_wait(db: Database) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with db.transaction() as tx:
            if tx.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ):
                return
        time.sleep(0.02)
    raise AssertionError("the claim never waited for the lock")


def test_a_window_whose_copy_went_meanwhile_is_read_again_for_the_claimed_turn(
    api: Api, db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim reads the history its worker's copy lacks; should the copy go between that
    read and its use (dropped least recently used, say), the window is read again whole, for
    the turn the claim took, not for whatever turn the worker leases by then."""
    from talon.runtime.history_cache import HistoryCache

    copies = HistoryCache()
    options = ClaimOptions(OPTIONS.worker_id, 30.0, 5, history=copies)
    assert isinstance(claim(db, session, options), Claim)
    assert copies.after(session) > 0
    with db.transaction() as tx:
        tx.execute("UPDATE turns SET state = 'completed', lease_owner = NULL")
    api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "second"})
    take = claiming._take

    def dropping(*args: Any, **kwargs: Any) -> Any:
        taken = take(*args, **kwargs)
        copies.forget(session)  # between the claim's read and its use
        api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "third"})
        api.ok("POST", f"{BASE}/s1/cancel")  # the claimed turn is nobody's lease any more
        return taken

    monkeypatch.setattr(claiming, "_take", dropping)
    claimed = claim(db, session, options)
    assert isinstance(claimed, Claim)
    assert [m["content"] for m in claimed.history] == ["hello", "second"]


def test_a_turn_whose_session_was_deleted_writes_nothing_more(
    api: Api, db: Database, session: uuid.UUID
) -> None:
    """The session's rows have no foreign key to it (migration 0015): each write of a
    session's events, messages or turns must itself find the session gone and write
    nothing, not leave orphaned rows. Here each write runs without a renewal before it."""
    from talon.runtime.journal import MODEL, Fenced, Step, complete, record
    from talon.sessions import events

    claimed = claim(db, session, OPTIONS)
    assert isinstance(claimed, Claim)
    api.ok("DELETE", f"{BASE}/s1")
    with db.transaction() as tx:
        events.append(tx, session, [("step.started", {"step": "late"})], claimed.lease.turn_id)
    answer = {"role": "assistant", "content": "late", "tool_calls": None, "tool_call_id": None}
    with pytest.raises(Fenced), db.transaction() as tx:  # the turn went with its session
        complete(tx, claimed.lease, 2, [answer], None, [("step.completed", {"step": "late"})])
    model_step = Step(1, MODEL, "model", "completed", {"content": "late", "toolCalls": []})
    with pytest.raises(Fenced), db.transaction() as tx:
        record(tx, claimed.lease, model_step)
    tables = ["messages", "turns", "session_events", "turn_steps"]
    assert row_counts(db, tables) == dict.fromkeys(tables, 0)


def _knowledge_read(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each claim that leased a turn sent the knowledge read with it."""
    return _noting_leases(monkeypatch, lambda leased: leased.knowledge_rows is not None)


def test_a_session_seen_without_knowledge_claims_without_reading_it(
    api: Api, db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    from talon.runtime.knowledge_hints import WithoutKnowledge

    options = ClaimOptions(OPTIONS.worker_id, 30.0, 5, without_knowledge=WithoutKnowledge())
    read, started = _knowledge_read(monkeypatch), _started_by_the_claim(monkeypatch)
    for content in ("second", "third"):
        assert isinstance(claim(db, session, options), Claim)
        with db.transaction() as tx:
            tx.execute("UPDATE turns SET state = 'completed', lease_owner = NULL")
        api.ok("POST", f"{BASE}/s1/message", 202, json={"content": content})
    assert read == [True, False] and started == [True, True]


def test_a_session_seen_without_knowledge_still_gets_knowledge_added_since(
    api: Api, db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guess is the worker's; the database decides: with knowledge added since, the
    claim's statement does not start the turn, and the second transaction retrieves it."""
    from talon.runtime.knowledge_hints import WithoutKnowledge

    hints = WithoutKnowledge()
    options = ClaimOptions(OPTIONS.worker_id, 30.0, 5, without_knowledge=hints)
    assert isinstance(claim(db, session, options), Claim) and hints.likely(session)
    with db.transaction() as tx:
        tx.execute("UPDATE turns SET state = 'completed', lease_owner = NULL")
    api.ok("POST", "/v1/ns/acme/knowledge", 201,
           json=samples.knowledge("acme", content="# Greetings\nSay hello back."))  # fmt: skip
    api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "hello again"})
    read, started = _knowledge_read(monkeypatch), _started_by_the_claim(monkeypatch)
    claimed = claim(db, session, options)
    assert isinstance(claimed, Claim) and read == [False] and started == [False]
    assert claimed.journal[0].output["documents"][0]["name"] == "faq"
    assert not hints.likely(session)  # its next claim reads the knowledge with it
    with db.transaction() as tx:
        tx.execute("UPDATE turns SET state = 'completed', lease_owner = NULL")
    api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "and again"})
    assert isinstance(claim(db, session, options), Claim) and read == [False, True]


def test_sessions_seen_without_knowledge_are_bounded_least_recent_first() -> None:
    from talon.runtime.knowledge_hints import WithoutKnowledge

    hints = WithoutKnowledge(max_sessions=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for uid in (a, b, a, c):  # `a` seen again: `b` is the least recent
        hints.note(uid, started_without=True)
    assert [hints.likely(uid) for uid in (a, b, c)] == [True, False, True]


def test_a_guessed_claim_of_a_resumed_or_failing_turn_needs_no_knowledge_read(
    api: Api, db: Database, session: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left out on a guess, the knowledge read is not missed where the claim's statement does
    not start the turn for another reason: a resumed turn has its knowledge step journaled,
    and a turn whose agent does not resolve is failed."""
    from talon.runtime.knowledge_hints import WithoutKnowledge

    hints = WithoutKnowledge()
    options = ClaimOptions(OPTIONS.worker_id, 30.0, 5, without_knowledge=hints)
    first = claim(db, session, options)
    assert isinstance(first, Claim) and hints.likely(session)
    read, started = _knowledge_read(monkeypatch), _started_by_the_claim(monkeypatch)
    with db.transaction() as tx:  # its worker died: the lease has run out
        tx.execute("UPDATE turns SET lease_expires_at = now() - interval '1 second'")
    resumed = claim(db, session, options)
    assert isinstance(resumed, Claim) and resumed.turn["attempts"] == 2
    assert read == [False] and started == [False]
    assert resumed.journal[0].output == first.journal[0].output
    with db.transaction() as tx:
        tx.execute("UPDATE turns SET state = 'completed', lease_owner = NULL")
    hints.note(session, started_without=True)
    _set_phase(db, "Failed")
    api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "again"})
    assert claim(db, session, options) is None  # failed, and nothing else is open
    assert read == [False, False] and started == [False, False]
    with db.transaction() as tx:
        failed = tx.one("SELECT error FROM turns WHERE seq = 2")
    assert failed is not None and failed["error"]["code"] == "agent_not_resolved"
