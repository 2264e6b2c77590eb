"""Session operations for the gateway: create/get/list/delete, read messages and turns,
post a message, cancel, and where a stream starts.

Every write commits the message, the turn, its events and the dispatch outbox row in one
transaction before the caller is answered. What a message does to a busy session is
`posting.py`; how things look in the API is `views.py`.
"""

from __future__ import annotations

import builtins  # a class here has a method named `list`: later annotations say builtins.list
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from talon.errors import Conflict, NotFound
from talon.sessions import events, messages, posting
from talon.sessions.models import CreateSession, PostMessage
from talon.sessions.posting import Accepted
from talon.sessions.usage import UsageQuery, usage_view
from talon.sessions.views import (
    OPEN_TURNS_SQL,
    SNAPSHOT_SQL,
    message_view,
    session_view,
    steps_view,
    summary,
    turn_view,
)
from talon.store import model_usage
from talon.store.database import Database, Tx, jsonb
from talon.store.model_usage import Scope, Window
from talon.store.resources import require_namespace
from talon.telemetry import metrics

__all__ = ["Accepted", "SessionService", "StreamStart"]


@dataclass(frozen=True)
class StreamStart:
    session_uid: uuid.UUID
    position: int  # the last event id the stream has covered
    events: list[events.Event]
    open_turns: int


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
            return created, session_view(tx, session)

    def get(self, namespace: str, agent: str, session_id: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            # The view's statements in one snapshot: a turn that completed between two of
            # them showed the session idle with its answer listed but not counted.
            tx.defer(SNAPSHOT_SQL, ())
            return session_view(tx, self._require(tx, namespace, agent, session_id))

    def list(
        self, namespace: str, agent: str, *, limit: int, after: str | None
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        with self.db.transaction() as tx:
            tx.defer(SNAPSHOT_SQL, ())  # each summary's statements agree, as in get()
            self._require_agent(tx, namespace, agent)
            rows = tx.all(
                "SELECT * FROM sessions WHERE namespace = %s AND agent = %s AND id > %s "
                "ORDER BY id LIMIT %s",
                (namespace, agent, after or "", limit + 1),
            )
            views = [summary(tx, r) for r in rows[:limit]]
        return views, (rows[limit - 1]["id"] if len(rows) > limit else None)

    def delete(self, namespace: str, agent: str, session_id: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            session = self._require(tx, namespace, agent, session_id, lock=True)
            view = summary(tx, session)
            # Its messages, turns (with their steps) and events go with it (migration 0016).
            tx.execute("DELETE FROM sessions WHERE uid = %s", (session["uid"],))
            # Open streams read, find the session gone and end.
            tx.execute(
                "SELECT pg_notify(%s, %s)",
                (events.EVENTS_CHANNEL, events.stream_key(namespace, session_id)),
            )
        return view

    def messages(
        self, namespace: str, agent: str, session_id: str, *, after: int, limit: int
    ) -> tuple[builtins.list[dict[str, Any]], int | None]:
        with self.db.transaction() as tx:
            session = self._require(tx, namespace, agent, session_id)
            rows = messages.page(tx, session["uid"], after=after, limit=limit + 1)
        items = [message_view(r) for r in rows[:limit]]
        return items, (items[-1]["seq"] if len(rows) > limit else None)

    def turn(
        self, namespace: str, agent: str, session_id: str, turn_id: str, *, outputs: bool = False
    ) -> dict[str, Any]:
        """The turn with its steps; with each step's journaled output if `outputs` (talon-ops
        shows them; the API does not, they can be large)."""
        with self.db.transaction() as tx:
            session = self._require(tx, namespace, agent, session_id)
            try:  # by its key alone: with the session too, a plan could scan the session's turns
                row = tx.one("SELECT * FROM turns WHERE id = %s", (uuid.UUID(turn_id),))
            except ValueError:  # not a turn id at all
                row = None
            if row is None or row["session_uid"] != session["uid"]:
                raise NotFound(f"turn {turn_id!r} not found in session {session_id!r}")
            view = turn_view(row)
            view["steps"] = steps_view(tx, row["id"], outputs=outputs)
            scope = Scope(namespace, turn_id=row["id"])
            view["usage"] = model_usage.total(tx, scope, Window())
            return view

    def usage(
        self,
        namespace: str,
        query: UsageQuery,
        *,
        agent: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        """Model token usage of the namespace, or of one agent, or of one of its sessions."""
        with self.db.transaction() as tx:
            if session_id is not None:
                assert agent is not None
                session = self._require(tx, namespace, agent, session_id, columns="uid, agent")
                scope = Scope(namespace, agent=agent, session_uid=session["uid"])
            elif agent is not None:
                self._require_agent(tx, namespace, agent)
                scope = Scope(namespace, agent=agent)
            else:
                require_namespace(tx, namespace)
                scope = Scope(namespace)
            return usage_view(tx, scope, query)

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
        with_events: bool = False,
    ) -> Accepted:
        """Queue the message's turn (or answer an Idempotency-Key retry with the turn it
        queued). `with_events`: the new turn's first events come back, for a stream of it
        (`Accepted.first_events_json`; only for strategy `enqueue`, the usual one)."""
        posted: posting.Accepted | posting.KeyUsed | None = None
        with self.db.transaction() as tx:
            if request.multitask_strategy == "enqueue":
                posted = posting.post_enqueued(
                    tx, namespace, agent, session_id, request, idempotency_key, source,
                    with_events=with_events,
                )  # fmt: skip
                found = None if isinstance(posted, posting.KeyUsed) else posted
            else:
                session = posting.lock(tx, namespace, session_id, idempotency_key)
                found = None
                if session is not None and session.agent == agent:
                    found = posting.post(
                        tx, session, session_id, request, idempotency_key, source, final=True
                    )
        if isinstance(posted, posting.KeyUsed):  # a retry: its turn, read once committed
            assert idempotency_key is not None
            with self.db.transaction() as tx:
                found = posting.replayed(tx, posted, request, idempotency_key)
        if found is None:
            with self.db.transaction() as tx:
                self._require_agent(tx, namespace, agent)
            raise NotFound(f"session {session_id!r} not found for agent {agent!r}")
        _count_cancelled(namespace, agent, found.interrupted)
        return found

    def ensure_many(
        self, tx: Tx, targets: builtins.list[tuple[str, str, str]]
    ) -> dict[tuple[str, str], tuple[uuid.UUID, str]]:
        """Create each (namespace, agent, session id) that does not exist yet, lock them all
        (in uid order, so concurrent callers cannot deadlock) and return, per (namespace,
        session id), its uid and the agent it belongs to (another agent's session is not
        taken over: the caller checks the owner)."""
        if not targets:
            return {}

        def lock(keys: builtins.list[tuple[str, str]]) -> builtins.list[dict[str, Any]]:
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
        """Where a stream starts: the session, the events after `after` (None: from now on,
        so none) and the number of open turns, in one statement (one look at the tables:
        the events read include the end of any turn counted as open) and one round trip."""
        sql = (
            f"SELECT uid, agent, last_event_id, {OPEN_TURNS_SQL}, "
            f"{events.after_sql('s')} AS events FROM sessions s WHERE namespace = %s AND id = %s"
        )
        with self.db.transaction() as tx:
            rows = tx.commit_with(sql, (after, events.READ_LIMIT, namespace, session_id))
        if not rows or rows[0]["agent"] != agent:
            with self.db.transaction() as tx:
                self._require(tx, namespace, agent, session_id)  # says which is missing
        session = rows[0]
        position = int(session["last_event_id"]) if after is None else after
        return StreamStart(
            session["uid"], position, events.from_json(session["events"]), int(session["open"])
        )

    def read_state(
        self, session_uid: uuid.UUID, after: int, limit: int = events.READ_LIMIT
    ) -> tuple[builtins.list[events.Event], int | None]:
        """Events after `after` and the number of open turns (None: the session is gone),
        in one statement: what a stream needs when its notifications do not suffice."""
        sql = (
            f"SELECT {OPEN_TURNS_SQL}, {events.after_sql('s')} AS events "
            "FROM sessions s WHERE s.uid = %s"
        )
        with self.db.transaction() as tx:
            rows = tx.commit_with(sql, (after, limit, session_uid))
        if not rows:
            return [], None
        return events.from_json(rows[0]["events"]), int(rows[0]["open"])

    def cancel(self, namespace: str, agent: str, session_id: str) -> builtins.list[str]:
        """Cancel every open turn of the session; return their ids."""
        with self.db.transaction() as tx:
            session = self._require(tx, namespace, agent, session_id, lock=True)
            cancelled = posting.cancel_open(tx, session["uid"])
        _count_cancelled(namespace, agent, len(cancelled))
        return cancelled

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
    def _session(
        tx: Tx, namespace: str, session_id: str, lock: bool = False, columns: str = "*"
    ) -> dict[str, Any] | None:
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


def _count_cancelled(namespace: str, agent: str, count: int) -> None:
    """Cancelled turns, counted once their cancellation committed."""
    if count:
        metrics.turns_ended.add(
            count, metrics.where(namespace=namespace, agent=agent, outcome="cancelled")
        )
