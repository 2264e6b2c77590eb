"""A session's messages: a turn's answers and tool results as the worker writes them, the
history window it sends the model, and the pages the API and talon-ops read.

The user's message is the one exception: `turn_queue.py` writes it together with its turn,
events and outbox row in one statement (a scheduler tick queues thousands at once). Every
other write to `messages`, and to the session's message counter, is here.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from talon.sessions import events
from talon.store.database import Tx, jsonb
from talon.store.turn_steps import Splice

# A turn's messages and events, written by the statement that completes the turn: the
# session's message and event counters move once, in one UPDATE (two in one statement would
# not see each other); only while that statement's `held` says the worker's lease holds.
_COMPLETING_CTES = (
    "msg_in AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS m(ord int, role text, "
    "  content text, tool_calls jsonb, tool_call_id text)), "
    "cs AS (UPDATE sessions SET last_message = last_message + %s, "
    "  last_event_id = last_event_id + %s, updated_at = now() "
    "  WHERE uid = %s AND EXISTS (SELECT 1 FROM held) "
    "  RETURNING uid, namespace, id, last_message, last_event_id), "
    "msg_ins AS (INSERT INTO messages (session_uid, seq, role, content, tool_calls, "
    "  tool_call_id, turn_id) SELECT cs.uid, cs.last_message - %s + m.ord, m.role, m.content, "
    "  m.tool_calls, m.tool_call_id, %s::uuid FROM cs, msg_in m), "
)


def completing(
    session_uid: uuid.UUID,
    turn_id: uuid.UUID,
    written: list[dict[str, Any]],
    new_events: list[tuple[str, dict[str, Any], int | None]],
) -> Splice:
    """The turn's messages `written` (dicts with `role`, `content`, `tool_calls` and
    `tool_call_id`, in order) and its `new_events` (see `events.completion_ctes`), as a part
    of the statement that completes the turn (`store/turn_steps.complete_turn`); it returns
    whether the events were announced. The caller locked the session row (`turn_steps.
    lock_session`)."""
    rows = []
    for ord_, message in enumerate(written, start=1):
        row = {"ord": ord_, "role": message["role"], "content": message["content"] or ""}
        if message.get("tool_calls"):  # absent, not JSON null: SQL NULL in the column
            row["tool_calls"] = message["tool_calls"]
        if message.get("tool_call_id") is not None:
            row["tool_call_id"] = message["tool_call_id"]
        rows.append(row)
    event_ctes, event_params = events.completion_ctes(turn_id, new_events, len(rows))
    params = (
        jsonb(rows),
        len(rows),
        len(new_events),
        session_uid,
        len(rows),
        turn_id,
        *event_params,
    )
    # Returned so that it runs: PostgreSQL skips a SELECT in WITH that nothing reads.
    return Splice(_COMPLETING_CTES + event_ctes, params, "(SELECT count(*) FROM notified)")


def page(tx: Tx, session_uid: uuid.UUID, *, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` messages after seq `after`, oldest first."""
    return tx.all(
        "SELECT * FROM messages WHERE session_uid = %s AND seq > %s ORDER BY seq LIMIT %s",
        (session_uid, after, limit),
    )


def recent(tx: Tx, session_uid: uuid.UUID, count: int) -> list[dict[str, Any]]:
    """The last `count` messages, oldest first."""
    return tx.all(
        "SELECT * FROM (SELECT * FROM messages WHERE session_uid = %s ORDER BY seq DESC "
        "LIMIT %s) m ORDER BY seq",
        (session_uid, count),
    )


def leased_window_since(
    session_uid: uuid.UUID, owner: str, turns: int, after: int
) -> tuple[str, tuple[Any, ...]]:
    """The statement reading the window (`turns` turns before the head, and the head) of the
    session's running turn that `owner` leases, as what a copy of it holding the session's
    messages up to seq `after` lacks (`runtime/history_cache.py`; 0: no copy), for a pipeline
    (the worker's claim sends it with the claiming statement, which has leased that turn by
    the time it runs); its row goes to `window_since`."""
    head = (
        "(SELECT seq FROM turns WHERE session_uid = %s AND state = 'running' "
        "AND lease_owner = %s ORDER BY seq LIMIT 1)"
    )
    params = (session_uid, owner, turns + 1, session_uid, session_uid, session_uid, after)
    return _WINDOW_SINCE_SQL.format(head=head), params


def turn_window_since(
    session_uid: uuid.UUID, turn_id: uuid.UUID, turns: int, after: int = 0
) -> tuple[str, tuple[Any, ...]]:
    """`leased_window_since` for the turn `turn_id`, whoever holds it now."""
    head = "(SELECT seq FROM turns WHERE session_uid = %s AND id = %s)"
    params = (session_uid, turn_id, turns + 1, session_uid, session_uid, session_uid, after)
    return _WINDOW_SINCE_SQL.format(head=head), params


@dataclass(frozen=True)
class WindowSince:
    """A window as `leased_window_since` reads it."""

    head: int  # the seq of the window's last turn (0: nothing was leased)
    since: int  # its turns are those numbered after `since`, up to `head`
    lo: int  # the seq of its first message (every message of its turns comes at or after it)
    last: int  # the session's message counter: every message up to it was committed
    # Every message of the session in [lo, last] after the copy's `after`, whichever its
    # turn, in seq order: (seq, its turn's seq, message: `role`, `content`, `tool_calls`,
    # `tool_call_id`); the turn's seq is None for a message of no turn (the column allows it).
    messages: list[tuple[int, int | None, dict[str, Any]]]

    def holds(self, turn_seq: int | None) -> bool:
        """Whether the turn numbered `turn_seq` is one of the window's."""
        return turn_seq is not None and self.since < turn_seq <= self.head


def window_since(row: dict[str, Any]) -> WindowSince:
    if row["head"] is None:
        return WindowSince(0, 0, 0, 0, [])
    return WindowSince(
        int(row["head"]),
        int(row["since"]),
        int(row["lo"]),
        int(row["last"]),
        [
            (seq, turn, {"role": role, "content": content, "tool_calls": calls,
                         "tool_call_id": call_id})
            for seq, turn, role, content, calls, call_id in json.loads(row["messages"] or "[]")
        ],
    )  # fmt: skip


# The window of the turn whose seq `{head}` (a one-row subquery) names, as what a worker's
# copy of it lacks: its bounds by turn seq, its first message's seq, the session's message
# counter, and every message of the session in [lo, that counter] after the copy's last,
# whichever its turn, with that turn's seq (the input of a turn queued behind the window is
# there: the next window needs it; an earlier turn's answer may come after the window's first
# input: the worker leaves both out by their turn's seq), as one JSON text of arrays. The
# first message is the first turn's input: a session's turns and messages are numbered
# together under its lock, so its turns' inputs come in turn order. Its turns are not read:
# each message's turn is one lookup by key, and a copy asks only for the few messages it
# lacks (reading the window's 41 turns at every claim cost 40 us of its 70, issue 19).
# Every bound is a value (a scalar subquery), none a join, so both tables are read for the
# window alone whatever the planner's statistics say of the session's size
# (tests/test_history.py). Joined to the head, a plan made for one-turn sessions read the
# whole session; without its upper bound, the messages' range looked like a third of the
# session and was scanned whole. JSON text because decoding it is one C call, where pg8000
# converts each column of each row in Python (and parses each uuid).
_WINDOW_SINCE_SQL = (
    "WITH h AS MATERIALIZED {head}, "
    "w AS MATERIALIZED (SELECT seq AS head, seq - %s AS since FROM h), "
    "t AS MATERIALIZED (SELECT input_seq AS lo FROM turns WHERE session_uid = %s "
    "  AND seq > (SELECT since FROM w) AND seq <= (SELECT head FROM w) ORDER BY seq LIMIT 1), "
    "c AS MATERIALIZED (SELECT last_message FROM sessions WHERE uid = %s) "
    "SELECT (SELECT head FROM w) AS head, (SELECT since FROM w) AS since, "
    "(SELECT lo FROM t) AS lo, (SELECT last_message FROM c) AS last, "
    "(SELECT json_agg(json_build_array(m.seq, "
    "  (SELECT seq FROM turns WHERE id = m.turn_id), m.role, m.content, m.tool_calls, "
    "  m.tool_call_id) ORDER BY m.seq)::text FROM messages m WHERE m.session_uid = %s "
    "  AND m.seq >= (SELECT lo FROM t) AND m.seq > %s AND m.seq <= (SELECT last_message FROM c)"
    ") AS messages"
)
