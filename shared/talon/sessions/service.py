"""Session operations for the gateway: create/get/list/delete, post a message, cancel.

Every write commits the message, the turn, its events and the dispatch outbox row in one
transaction before the caller is answered.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from talon.errors import Conflict, Invalid, NotFound
from talon.sessions import events
from talon.sessions.models import CreateSession, PostMessage, Session
from talon.sessions.turn_queue import NewTurn, queue_turns
from talon.store.database import Database, Tx, jsonb
from talon.store.resources import require_namespace

RECENT_MESSAGES = 20
OPEN_STATES = ("queued", "running")


# A session row's open (queued or running) turns, as a select-list item of `sessions s`.
_OPEN = (
    "(SELECT count(*) FROM turns t WHERE t.session_uid = s.uid "
    "AND t.state IN ('queued', 'running')) AS open"
)


@dataclass(frozen=True)
class Accepted:
    turn_id: str
    message_seq: int
    state: str
    replayed: bool  # an Idempotency-Key retry: nothing new was written
    stream_from: int  # stream with Last-Event-ID = this to see the turn from its first event

    def to_dict(self) -> dict[str, Any]:
        return {
            "turnId": self.turn_id,
            "messageSeq": self.message_seq,
            "state": self.state,
            "streamFrom": self.stream_from,
        }


@dataclass(frozen=True)
class StreamStart:
    session_uid: uuid.UUID
    position: int  # the last event id the stream has covered
    events: list[events.Event]
    open_turns: int


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def turn_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "seq": int(row["seq"]),
        "state": row["state"],
        "source": row["source"],
        "attempts": int(row["attempts"]),
        "provider": row["provider"],
        "error": row["error"],
        "createdAt": _iso(row["created_at"]),
        "startedAt": _iso(row["started_at"]),
        "finishedAt": _iso(row["finished_at"]),
    }


def message_view(row: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"seq": int(row["seq"]), "role": row["role"], "content": row["content"]}
    if row.get("tool_calls"):
        view["toolCalls"] = row["tool_calls"]
    if row.get("tool_call_id"):
        view["toolCallId"] = row["tool_call_id"]
    view["turnId"] = str(row["turn_id"]) if row.get("turn_id") else None
    view["createdAt"] = _iso(row["created_at"])
    return view


class SessionService:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- sessions ----------------------------------------------------------------------------

    def create(self, namespace: str, agent: str, request: CreateSession) -> tuple[bool, dict]:
        """Return (created, view). An existing id for the same agent is returned as is."""
        session_id = request.id or f"s-{secrets.token_hex(8)}"
        with self.db.transaction() as tx:
            self._require_agent(tx, namespace, agent)
            row = tx.one(
                "INSERT INTO sessions (uid, namespace, id, agent, metadata) "
                "VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT (namespace, id) DO NOTHING "
                "RETURNING uid",
                (uuid.uuid4(), namespace, session_id, agent, jsonb(request.metadata)),
            )
            created = row is not None
            session = self._session(tx, namespace, session_id)
            assert session is not None
            if session["agent"] != agent:
                raise Conflict(
                    f"session {session_id!r} already exists for agent {session['agent']!r}",
                    [{"path": "id", "message": f"belongs to agent {session['agent']!r}"}],
                )
            return created, self._view(tx, session)

    def get(self, namespace: str, agent: str, session_id: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            return self._view(tx, self._require(tx, namespace, agent, session_id))

    def list(
        self, namespace: str, agent: str, *, limit: int, after: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        with self.db.transaction() as tx:
            self._require_agent(tx, namespace, agent)
            rows = tx.all(
                "SELECT * FROM sessions WHERE namespace = %s AND agent = %s AND id > %s "
                "ORDER BY id LIMIT %s",
                (namespace, agent, after or "", limit + 1),
            )
            views = [self._summary(tx, r) for r in rows[:limit]]
        return views, (rows[limit - 1]["id"] if len(rows) > limit else None)

    def delete(self, namespace: str, agent: str, session_id: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            session = self._require(tx, namespace, agent, session_id, lock=True)
            view = self._summary(tx, session)
            tx.execute("DELETE FROM sessions WHERE uid = %s", (session["uid"],))
            # Open streams read, find the session gone and end.
            tx.execute(
                "SELECT pg_notify(%s, %s)",
                (events.EVENTS_CHANNEL, events.stream_key(namespace, session_id)),
            )
        return view

    def messages(
        self, namespace: str, agent: str, session_id: str, *, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        with self.db.transaction() as tx:
            session = self._require(tx, namespace, agent, session_id)
            rows = tx.all(
                "SELECT * FROM messages WHERE session_uid = %s AND seq > %s ORDER BY seq LIMIT %s",
                (session["uid"], after, limit + 1),
            )
        items = [message_view(r) for r in rows[:limit]]
        return items, (items[-1]["seq"] if len(rows) > limit else None)

    def turn(self, namespace: str, agent: str, session_id: str, turn_id: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            session = self._require(tx, namespace, agent, session_id)
            row = tx.one(
                "SELECT * FROM turns WHERE session_uid = %s AND id::text = %s",
                (session["uid"], turn_id),
            )
            if row is None:
                raise NotFound(f"turn {turn_id!r} not found in session {session_id!r}")
            view = turn_view(row)
            view["steps"] = _steps(tx, row["id"])
            return view

    # -- messages and turns ------------------------------------------------------------------

    def post_message(
        self,
        namespace: str,
        agent: str,
        session_id: str,
        request: PostMessage,
        *,
        idempotency_key: str | None = None,
        source: str = "api",
    ) -> Accepted:
        with self.db.transaction() as tx:
            return self._post(tx, namespace, agent, session_id, request, idempotency_key, source)

    def _post(
        self,
        tx: Tx,
        namespace: str,
        agent: str,
        session_id: str,
        request: PostMessage,
        idempotency_key: str | None,
        source: str,
    ) -> Accepted:
        request_hash = hashlib.sha256(
            json.dumps([request.content, request.multitask_strategy]).encode()
        ).digest()
        session = self._require(tx, namespace, agent, session_id, lock=True, columns="uid, agent")
        uid = session["uid"]
        if idempotency_key is not None:
            previous = tx.one(
                "SELECT id, input_seq, state, request_hash, (SELECT min(id) - 1 FROM "
                "session_events e WHERE e.turn_id = turns.id) AS stream_from FROM turns "
                "WHERE session_uid = %s AND idempotency_key = %s",
                (uid, idempotency_key),
            )
            if previous is not None:
                if bytes(previous["request_hash"]) != request_hash:
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
        open_turns = []
        if request.multitask_strategy != "enqueue":  # enqueue queues behind whatever is open
            open_turns = tx.all(
                "SELECT id, state FROM turns WHERE session_uid = %s AND state IN "
                "('queued', 'running') ORDER BY seq FOR UPDATE",
                (uid,),
            )
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
            events.append(tx, uid, [(event_type, data)], cancelled)
        (queued,) = queue_turns(
            tx, [NewTurn(uid, request.content, source, idempotency_key, request_hash)]
        )
        assert queued is not None  # the session row is locked above
        return Accepted(str(queued.turn_id), queued.input_seq, "queued", False, queued.stream_from)

    def ensure_many(
        self, tx: Tx, targets: list[tuple[str, str, str]]
    ) -> dict[tuple[str, str], tuple[uuid.UUID, str]]:
        """Create each (namespace, agent, session id) that does not exist yet, lock them all
        (in uid order, so concurrent callers cannot deadlock) and return, per (namespace,
        session id), its uid and the agent it belongs to (another agent's session is not
        taken over: the caller checks the owner)."""
        if not targets:
            return {}

        def lock(keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
            return tx.all(
                "SELECT uid, namespace, id, agent FROM sessions WHERE (namespace, id) IN "
                "(SELECT namespace, id FROM jsonb_to_recordset(%s::jsonb) AS t(namespace text, "
                "id text)) ORDER BY uid FOR UPDATE",
                (json.dumps([{"namespace": ns, "id": session_id} for ns, session_id in keys]),),
            )

        keys = sorted({(namespace, session_id) for namespace, _, session_id in targets})
        rows = lock(keys)
        found = {(r["namespace"], r["id"]) for r in rows}
        missing = {(ns, sid): agent for ns, agent, sid in targets if (ns, sid) not in found}
        if missing:
            tx.execute(
                "INSERT INTO sessions (uid, namespace, id, agent) SELECT * FROM "
                "jsonb_to_recordset(%s::jsonb) AS t(uid uuid, namespace text, id text, "
                "agent text) ON CONFLICT (namespace, id) DO NOTHING",
                (json.dumps([
                    {"uid": str(uuid.uuid4()), "namespace": ns, "id": sid, "agent": agent}
                    for (ns, sid), agent in missing.items()
                ]),),
            )  # fmt: skip
            rows = lock(keys)  # the new ones, and any a concurrent caller created meanwhile
        return {(r["namespace"], r["id"]): (r["uid"], r["agent"]) for r in rows}

    def open_stream(
        self, namespace: str, agent: str, session_id: str, after: int | None
    ) -> StreamStart:
        """Where a stream starts, in one transaction: the session, the events after `after`
        (None: from now on, so none) and the number of open turns."""
        with self.db.transaction() as tx:
            # Count before reading (each statement sees its own moment): events read later
            # include the end of any turn counted as open; the other order could miss it and
            # end an untilTurnEnd stream before the turn's last events.
            session = self._require(
                tx, namespace, agent, session_id, columns=f"uid, agent, last_event_id, {_OPEN}"
            )
            uid = session["uid"]
            position = int(session["last_event_id"]) if after is None else after
            open_turns = int(session["open"])
            batch = [] if after is None else events.read_after(tx, uid, after)
            return StreamStart(uid, position, batch, open_turns)

    def read_state(
        self, session_uid: uuid.UUID, after: int, limit: int = events.READ_LIMIT
    ) -> tuple[list[events.Event], int | None]:
        """Events after `after` and the number of open turns (None: the session is gone),
        in one transaction: what a stream needs when its notifications do not suffice."""
        with self.db.transaction() as tx:
            open_turns = self._open_turns(tx, session_uid)
            if open_turns is None:
                return [], None
            return events.read_after(tx, session_uid, after, limit), open_turns

    @staticmethod
    def _open_turns(tx: Tx, session_uid: uuid.UUID) -> int | None:
        row = tx.one(f"SELECT {_OPEN} FROM sessions s WHERE s.uid = %s", (session_uid,))
        return None if row is None else int(row["open"])

    def cancel(self, namespace: str, agent: str, session_id: str) -> list[str]:
        """Cancel every open turn of the session; return their ids."""
        with self.db.transaction() as tx:
            session = self._require(tx, namespace, agent, session_id, lock=True)
            open_turns = tx.all(
                "SELECT id FROM turns WHERE session_uid = %s AND state IN ('queued', 'running') "
                "ORDER BY seq FOR UPDATE",
                (session["uid"],),
            )
            for turn in open_turns:
                _cancel_turn(tx, turn["id"], "cancelled by request")
                cancelled = {"reason": "requested", "openTurns": 0}  # all of them, at commit
                events.append(tx, session["uid"], [("turn.cancelled", cancelled)], turn["id"])
        return [str(t["id"]) for t in open_turns]

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _require_agent(tx: Tx, namespace: str, agent: str) -> None:
        found = tx.scalar(
            "SELECT 1 FROM resources WHERE kind = 'Agent' AND namespace = %s AND name = %s",
            (namespace, agent),
        )
        if found is None:
            require_namespace(tx, namespace)
            raise NotFound(f"Agent {agent!r} not found in namespace {namespace!r}")

    @staticmethod
    def _session(  # type: ignore[no-untyped-def]
        tx: Tx, namespace: str, session_id: str, lock: bool = False, columns: str = "*"
    ):
        suffix = " FOR UPDATE" if lock else ""
        return tx.one(
            f"SELECT {columns} FROM sessions s WHERE namespace = %s AND id = %s{suffix}",
            (namespace, session_id),
        )

    def _require(
        self,
        tx: Tx,
        namespace: str,
        agent: str,
        session_id: str,
        *,
        lock: bool = False,
        columns: str = "*",
    ) -> dict[str, Any]:
        """The session row (`columns` of it, `agent` always among them), or NotFound."""
        session = self._session(tx, namespace, session_id, lock, columns)
        if session is None or session["agent"] != agent:
            self._require_agent(tx, namespace, agent)
            raise NotFound(f"session {session_id!r} not found for agent {agent!r}")
        return session

    @staticmethod
    def _summary(tx: Tx, session: dict[str, Any]) -> dict[str, Any]:
        active = tx.one(
            "SELECT * FROM turns WHERE session_uid = %s AND state IN ('queued', 'running') "
            "ORDER BY seq LIMIT 1",
            (session["uid"],),
        )
        queued = tx.scalar(
            "SELECT count(*) FROM turns WHERE session_uid = %s AND state = 'queued'",
            (session["uid"],),
        )
        return {
            "id": session["id"],
            "agent": session["agent"],
            "ns": session["namespace"],
            "status": session["status"],
            "metadata": session["metadata"],
            "activeTurn": turn_view(active) if active else None,
            "queuedTurns": int(queued),
            "messageCount": int(session["last_message"]),
            "lastEventId": int(session["last_event_id"]),
            "createdAt": _iso(session["created_at"]),
            "updatedAt": _iso(session["updated_at"]),
        }

    def _view(self, tx: Tx, session: dict[str, Any]) -> dict[str, Any]:
        """The seed's shape: summary plus recent messages and the latest turn's steps."""
        view = self._summary(tx, session)
        recent = tx.all(
            "SELECT * FROM (SELECT * FROM messages WHERE session_uid = %s ORDER BY seq DESC "
            "LIMIT %s) m ORDER BY seq",
            (session["uid"], RECENT_MESSAGES),
        )
        view["messages"] = [
            {"role": m["role"], "content": m["content"]} for m in recent if m["role"] != "tool"
        ]
        latest = tx.one(
            "SELECT id FROM turns WHERE session_uid = %s ORDER BY seq DESC LIMIT 1",
            (session["uid"],),
        )
        view["stream"] = (
            [{"step": s["name"], "state": s["state"]} for s in _steps(tx, latest["id"])]
            if latest
            else []
        )
        return Session.model_validate(view).model_dump(mode="json")


def _steps(tx: Tx, turn_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = tx.all(
        "SELECT idx, name, kind, state, started_at, completed_at FROM turn_steps "
        "WHERE turn_id = %s ORDER BY idx",
        (turn_id,),
    )
    return [
        {
            "index": r["idx"],
            "name": r["name"],
            "kind": r["kind"],
            "state": r["state"],
            "startedAt": _iso(r["started_at"]),
            "completedAt": _iso(r["completed_at"]),
        }
        for r in rows
    ]


def _cancel_turn(tx: Tx, turn_id: uuid.UUID, reason: str) -> None:
    # Bumping the fencing token makes any worker still running this turn fail its next write.
    tx.execute(
        "UPDATE turns SET state = 'cancelled', fencing_token = fencing_token + 1, "
        "finished_at = now(), error = %s::jsonb, lease_owner = NULL WHERE id = %s",
        (jsonb({"code": "cancelled", "message": reason}), turn_id),
    )
