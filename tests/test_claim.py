"""A turn's claim and start: the usual turn is claimed and started by one statement batch
with its COMMIT, and the database decides whether it is the usual turn; every other turn is
started in a transaction of its own that first checks the lease still holds."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import samples
from conftest import Api
from talon.runtime import claim as claiming
from talon.runtime.claim import Busy, Claim, ClaimOptions, claim
from talon.store.database import Database
from talon.store.liveness import OwnerLock

BASE = "/v1/ns/acme/agents/bot/sessions"
OPTIONS = ClaimOptions("worker-a", 30.0, 5)


@pytest.fixture
def session(api: Api, db: Database) -> uuid.UUID:
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    api.ok("POST", BASE, 201, json={"id": "s1"})
    api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "hello"})
    with db.transaction() as tx:
        return tx.scalar("SELECT uid FROM sessions WHERE id = 's1'")


def _written(db: Database) -> dict[str, Any]:
    with db.transaction() as tx:
        return {
            "steps": tx.all("SELECT idx, kind, state, output FROM turn_steps ORDER BY idx"),
            "events": [r["type"] for r in tx.all("SELECT type FROM session_events ORDER BY id")],
        }


def _started_by_the_claim(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each claim's own statement started its turn (else `_begin` did)."""
    said: list[bool] = []
    take = claiming._take

    def noting(*args: Any, **kwargs: Any) -> Any:
        taken = take(*args, **kwargs)
        if isinstance(taken, claiming._Leased):
            said.append(taken.started)
        return taken

    monkeypatch.setattr(claiming, "_take", noting)
    return said


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
