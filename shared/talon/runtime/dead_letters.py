"""A dead dispatch event: the broker delivered it `maxDeliveryAttempts` times and gave up
(Pub/Sub forwarded it to the dead-letter topic; the postgres broker marks its row dead).

The turn it names is failed with the code `dead_lettered`, so the session's stream says why
the turn never finished and the turns behind it run. Unless the session's head turn is
running under a live lease: then a worker is driving the session, and it runs every open
turn before it lets its own delivery go; this event only ran out of deliveries because it
kept finding the session busy, and nothing is failed.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from talon.runtime.claim import finish_failed
from talon.store.database import Database

log = logging.getLogger(__name__)
DEAD_LETTERED = "dead_lettered"

# The session row first, then its open turns (the order every writer uses).
_LOCK_SQL = """
WITH s AS (SELECT uid FROM sessions WHERE uid = %s FOR UPDATE)
SELECT t.id, t.state, COALESCE(t.state = 'running' AND t.lease_expires_at > now(), false) AS live
FROM turns t JOIN s ON t.session_uid = s.uid
WHERE t.state IN ('queued', 'running') ORDER BY t.seq FOR UPDATE OF t
"""


def fail_dead_lettered(db: Database, payload: dict[str, Any], attempts: int) -> bool:
    """Fail the turn a dead dispatch event names, if it is still open and its session is not
    being driven. True when a turn was failed. Safe to call twice for the same event."""
    try:
        session_uid = uuid.UUID(str(payload["sessionUid"]))
        turn_id = uuid.UUID(str(payload["turnId"]))
    except (KeyError, ValueError):
        log.error("dead dispatch event without a session and turn: %r", payload)
        return False
    with db.transaction() as tx:
        open_turns = tx.all(_LOCK_SQL, (session_uid,))
        if not open_turns:
            return False
        if open_turns[0]["live"]:
            log.info("dead dispatch event for turn %s: session %s is being driven; nothing "
                     "to fail", turn_id, session_uid)  # fmt: skip
            return False
        if turn_id not in {row["id"] for row in open_turns}:
            return False  # finished meanwhile
        finish_failed(
            tx, session_uid, turn_id, DEAD_LETTERED,
            f"its dispatch event failed {attempts} deliveries and was dead-lettered",
            attempts=attempts,
        )  # fmt: skip
    return True
