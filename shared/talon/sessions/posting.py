"""What a new message does to a session, in the caller's transaction with the session row
locked: an `Idempotency-Key` retry answers with the turn it queued the first time, the
multitask strategy decides about the turns still open (`enqueue` queues behind them,
`reject` refuses, `interrupt` cancels them), then the message's turn is queued. Cancelling
a session's open turns is here too: it is the same fencing move as an interrupt.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from talon.errors import Conflict, Invalid
from talon.sessions import events
from talon.sessions.models import PostMessage
from talon.sessions.turn_queue import (
    NewTurn,
    PostedTurn,
    QueuedTurn,
    queue_posted,
    queue_turns,
)
from talon.store.database import Tx, jsonb

# What an idempotency key may be (the HTTP header and the gRPC field alike).
IDEMPOTENCY_KEY_PATTERN = "[\\u0020-\\u007e]{1,200}"
IDEMPOTENCY_KEY_EXPECTS = "1 to 200 printable ASCII characters"


@dataclass(frozen=True)
class Accepted:
    turn_id: str
    message_seq: int
    state: str
    replayed: bool  # an Idempotency-Key retry: nothing new was written
    stream_from: int  # stream with Last-Event-ID = this to see the turn from its first event
    interrupted: int = 0  # open turns this message cancelled (multitask_strategy interrupt)
    # A newly queued turn's session and, when asked for, its first events (`QueuedTurn`);
    # None for a replay.
    session_uid: uuid.UUID | None = None
    first_events_json: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "turnId": self.turn_id,
            "messageSeq": self.message_seq,
            "state": self.state,
            "streamFrom": self.stream_from,
        }


def request_hash(request: PostMessage) -> bytes:
    """What an Idempotency-Key retry must repeat: the content and the strategy."""
    body = json.dumps([request.content, request.multitask_strategy])
    return hashlib.sha256(body.encode()).digest()


_LOCK_SQL = "SELECT uid, agent FROM sessions WHERE namespace = %s AND id = %s FOR UPDATE"
# The turn an earlier request with the same Idempotency-Key queued, in the session `{session}`
# (a value). Where the turn's events start was written with it (migration 0017); a turn
# queued before that is looked up within its session's events.
_REPLAY_IN_SQL = (
    "SELECT t.id, t.input_seq, t.state, t.request_hash, COALESCE(t.stream_from, (SELECT "
    "min(e.id) - 1 FROM session_events e WHERE e.session_uid = t.session_uid "
    "AND e.turn_id = t.id)) AS stream_from FROM turns t WHERE t.session_uid = {session} "
    "AND t.idempotency_key = %s"
)
# ...its session named as in the URL, run after the lock, as a statement of its own: it sees a
# turn that a concurrent request with the key committed while this one waited for the lock.
# The session is a scalar subquery so that the turn is found by the (session, key) index in
# any plan: as a join, the generic plan a young database gets scanned every turn for the key.
_REPLAY_SQL = _REPLAY_IN_SQL.format(
    session="(SELECT uid FROM sessions WHERE namespace = %s AND id = %s)"
)
# ...in the session a posted message's statement locked (`KeyUsed`), by its uid: a session
# deleted since, or deleted and made again under its id, has no such turn.
_REPLAY_BY_UID_SQL = _REPLAY_IN_SQL.format(session="%s")


@dataclass(frozen=True)
class Locked:
    """A session locked for a new message, with the turn an earlier request with the same
    Idempotency-Key queued, if any."""

    uid: uuid.UUID
    agent: str
    previous: dict[str, Any] | None


def lock(tx: Tx, namespace: str, session_id: str, idempotency_key: str | None) -> Locked | None:
    """Lock the session row and look up the key's earlier turn: one round trip (the lookup
    is a statement of its own after the lock). None: no such session."""
    if idempotency_key is None:
        row = tx.one(_LOCK_SQL, (namespace, session_id))
        return None if row is None else Locked(row["uid"], row["agent"], None)
    session, previous = tx.pipeline(
        [(_LOCK_SQL, (namespace, session_id)),
         (_REPLAY_SQL, (namespace, session_id, idempotency_key))]
    )  # fmt: skip
    if not session:
        return None
    return Locked(session[0]["uid"], session[0]["agent"], previous[0] if previous else None)


@dataclass(frozen=True)
class KeyUsed:
    """`post_enqueued` found the message's Idempotency-Key's turn queued already in the
    session `session_uid` (nothing written): `replayed` answers with it, in a transaction of
    its own."""

    session_uid: uuid.UUID


def post_enqueued(
    tx: Tx,
    namespace: str,
    agent: str,
    session_id: str,
    request: PostMessage,
    idempotency_key: str | None,
    source: str,
    *,
    with_events: bool = False,
) -> Accepted | KeyUsed | None:
    """Queue a message behind whatever is open (strategy `enqueue`, which looks at no open
    turn) in one statement with its COMMIT: the session's lock and the queueing, which writes
    only if the session is `agent`'s and the key queued nothing yet (`turn_queue._POST_SQL`).
    None (nothing written): no such session for `agent`; KeyUsed: the key's turn is the
    answer. The transaction is over. `with_events`: a new turn's first events come back
    (`Accepted.first_events_json`)."""
    digest = request_hash(request)
    turn = PostedTurn(
        namespace, session_id, agent, request.content, source, idempotency_key, digest
    )
    posted = queue_posted(tx, turn, with_events=with_events)
    if posted is None or posted.agent != agent:
        return None
    if posted.queued is None:
        return KeyUsed(posted.session_uid)
    return _queued(posted.queued)


def replayed(tx: Tx, used: KeyUsed, request: PostMessage, idempotency_key: str) -> Accepted | None:
    """The answer to a message whose Idempotency-Key queued a turn already (`used`): that
    turn, read after the statement that found it committed; None if its session was deleted
    since (the request then finds no session, as it would a moment later)."""
    previous = tx.one(_REPLAY_BY_UID_SQL, (used.session_uid, idempotency_key))
    return None if previous is None else _replay(previous, request_hash(request))


def post(
    tx: Tx,
    session: Locked,
    session_id: str,
    request: PostMessage,
    idempotency_key: str | None,
    source: str,
    *,
    final: bool = False,
) -> Accepted:
    """Queue the message's turn under its strategy, in the caller's transaction on the
    session it locked (`lock`). `final`: the transaction ends here, and its COMMIT goes in
    the same round trip as the last statement."""
    digest = request_hash(request)
    session_uid = session.uid
    if session.previous is not None:
        return _replay(session.previous, digest)
    open_turns = []
    if request.multitask_strategy != "enqueue":  # enqueue queues behind whatever is open
        open_turns = _lock_open_turns(tx, session_uid)
    pending: list[tuple[str, dict[str, Any], uuid.UUID | None]] = []
    if open_turns and request.multitask_strategy == "reject":
        raise Conflict(
            f"session {session_id!r} has a turn in progress; retry later or use "
            "multitask_strategy 'enqueue' or 'interrupt'",
            [{"path": "multitask_strategy", "message": "a turn is in progress"}],
        )
    if open_turns and request.multitask_strategy == "interrupt":
        for turn in open_turns:
            _cancel_turn(tx, turn["id"], "interrupted by a newer message")
            # The new message's turn, queued below in this transaction, stays open.
            pending.append(
                ("turn.cancelled", {"reason": "interrupted", "openTurns": 1}, turn["id"])
            )
    for event_type, data, cancelled in pending:
        events.append(tx, session_uid, [(event_type, data)], cancelled)
    (queued,) = queue_turns(
        tx,
        [NewTurn(session_uid, request.content, source, idempotency_key, digest)],
        final=final,
    )
    assert queued is not None  # the session row is locked by the caller
    return _queued(queued, interrupted=len(pending))


def _queued(queued: QueuedTurn, interrupted: int = 0) -> Accepted:
    return Accepted(
        str(queued.turn_id), queued.input_seq, "queued", False, queued.stream_from,
        interrupted, queued.session_uid, queued.events_json,
    )  # fmt: skip


def _replay(previous: dict[str, Any], digest: bytes) -> Accepted:
    """What the earlier request with this key was answered; a key reused with another body
    is refused."""
    if bytes(previous["request_hash"]) != digest:
        raise Invalid(
            "Idempotency-Key was already used with a different request",
            [{"path": "Idempotency-Key", "message": "reused with another body"}],
        )
    return Accepted(
        str(previous["id"]),
        int(previous["input_seq"]),
        previous["state"],
        True,
        int(previous["stream_from"] or 0),
    )


def cancel_open(tx: Tx, session_uid: uuid.UUID) -> list[str]:
    """Cancel every open turn of the session (its row locked by the caller); their ids."""
    open_turns = _lock_open_turns(tx, session_uid)
    for turn in open_turns:
        _cancel_turn(tx, turn["id"], "cancelled by request")
        cancelled = {"reason": "requested", "openTurns": 0}  # all of them, at commit
        events.append(tx, session_uid, [("turn.cancelled", cancelled)], turn["id"])
    return [str(t["id"]) for t in open_turns]


def _lock_open_turns(tx: Tx, session_uid: uuid.UUID) -> list[dict[str, Any]]:
    return tx.all(
        "SELECT id, state FROM turns WHERE session_uid = %s AND state IN "
        "('queued', 'running') ORDER BY seq FOR UPDATE",
        (session_uid,),
    )


def _cancel_turn(tx: Tx, turn_id: uuid.UUID, reason: str) -> None:
    # Bumping the fencing token makes any worker still running this turn fail its next write.
    tx.execute(
        "UPDATE turns SET state = 'cancelled', fencing_token = fencing_token + 1, "
        "finished_at = now(), error = %s::jsonb, lease_owner = NULL WHERE id = %s",
        (jsonb({"code": "cancelled", "message": reason}), turn_id),
    )
