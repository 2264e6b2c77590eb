"""Which sessions' turns this worker last saw start without knowledge, so that their next
claim can leave the knowledge read out of its round trip (`runtime/claim.py`).

A guess, never a decision: the claiming statement checks in the database that the
namespace has no knowledge (`turn_start.start_ctes`), and a turn it does not start
(knowledge added since, a resumed turn, an agent that does not resolve) is started by the
claim's second transaction, which then retrieves the knowledge itself. A wrong guess costs
that one statement, once: the session is forgotten until a claim starts its turn again (so
is a session whose turn is not started for another reason: its next claim reads the
knowledge once more).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict

MAX_SESSIONS = 10_000  # ~1 MB; the least recently claimed are forgotten first


class WithoutKnowledge:
    """Sessions whose last claimed turn started without knowledge, as far as this worker
    knows; safe to share between a worker's threads."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._max = max_sessions
        self._sessions: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._lock = threading.Lock()

    def likely(self, session_uid: uuid.UUID) -> bool:
        with self._lock:
            return session_uid in self._sessions

    def note(self, session_uid: uuid.UUID, *, started_without: bool) -> None:
        """What a claim that leased a turn of the session found: whether its own statement
        started the turn (so the namespace had no knowledge)."""
        with self._lock:
            if not started_without:
                self._sessions.pop(session_uid, None)
                return
            self._sessions[session_uid] = None
            self._sessions.move_to_end(session_uid)
            if len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
