"""A dead dispatch event: the broker delivered it `maxDeliveryAttempts` times and gave up
(Pub/Sub forwarded it to the dead-letter topic; the postgres broker marks its row dead).

An event runs out of deliveries for one of two reasons, and each gets its own answer:
- it kept finding its session busy: the session's head turn runs under a live lease held by a
  live worker (its liveness lock is held, `store/liveness.py`). Nothing is failed, and the
  event is queued again with a fresh count (a new outbox row), so that the turn it names is
  never left without a delivery should that worker die later;
- otherwise its handling kept failing (or its workers kept dying): the turn it names is failed
  with the code `dead_lettered`, so the session's stream says why it never finished, and if
  turns remain open behind it, a fresh event is queued for them.
A turn that kills every worker that runs it is failed by its own attempt limit
(`too_many_attempts`) whatever its deliveries do.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from talon.broker import outbox
from talon.broker.outbox import DISPATCH_TOPIC
from talon.runtime.claim import finish_failed
from talon.store.database import Database, Tx
from talon.store.liveness import owner_gone_sql

log = logging.getLogger(__name__)
DEAD_LETTERED = "dead_lettered"

# The session row first, then its open turns (the order every writer uses). A lease is live
# while it has not expired and its owner holds its liveness lock.
_LOCK_SQL = f"""
WITH s AS (SELECT uid FROM sessions WHERE uid = %s FOR UPDATE)
SELECT t.id, t.state,
       COALESCE(t.state = 'running' AND t.lease_expires_at > now()
                AND NOT {owner_gone_sql("t.lease_owner")}, false) AS live
FROM turns t JOIN s ON t.session_uid = s.uid
WHERE t.state IN ('queued', 'running') ORDER BY t.seq FOR UPDATE OF t
"""


def fail_dead_lettered(db: Database, payload: dict[str, Any], attempts: int) -> bool:
    """Answer a dead dispatch event (see above). True when a turn was failed. Safe to call
    twice for the same event."""
    try:
        session_uid = uuid.UUID(str(payload["sessionUid"]))
        turn_id = uuid.UUID(str(payload["turnId"]))
    except (KeyError, ValueError):
        log.error("dead dispatch event without a session and turn: %r", payload)
        return False
    with db.transaction() as tx:
        open_turns = tx.all(_LOCK_SQL, (session_uid,))
        open_ids = [row["id"] for row in open_turns]
        if turn_id not in open_ids:
            return False  # finished meanwhile
        if open_turns[0]["live"]:
            log.info("dead dispatch event for turn %s: session %s is being driven; queued "
                     "again", turn_id, session_uid)  # fmt: skip
            _dispatch_again(tx, session_uid, turn_id)
            return False
        finish_failed(
            tx, session_uid, turn_id, DEAD_LETTERED,
            f"its dispatch event failed {attempts} deliveries and was dead-lettered",
            attempts=attempts,
        )  # fmt: skip
        behind = [other for other in open_ids if other != turn_id]
        if behind:
            _dispatch_again(tx, session_uid, behind[0])
    return True


def _dispatch_again(tx: Tx, session_uid: uuid.UUID, turn_id: uuid.UUID) -> None:
    """A fresh dispatch event for the session (delivered after this commit)."""
    payload = {"sessionUid": str(session_uid), "turnId": str(turn_id)}
    outbox.enqueue(tx, DISPATCH_TOPIC, payload, key=str(session_uid))
