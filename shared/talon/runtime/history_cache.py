"""A worker's copies of the history windows it sent the model last, so that a session's next
claim reads only the messages written since (the last turn's answers, the next input), not
the whole window again: ~80 messages, and with long tool results most of a claim's bytes.

A copy holds every message of its session in [lo, last]: messages are never changed once
written, numbered per session under the session's lock, and read up to the session's message
counter (committed), so a copy stays exact and the next read asks for those after `last`. A
copy is used only by the read that asked after its `last` (if it was replaced in between,
that read's window is read again whole), and copies are dropped least recently used beyond a
byte budget.
"""

from __future__ import annotations

import bisect
import sys
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from talon.sessions.messages import WindowSince

MAX_BYTES = 32 * 2**20  # held across all sessions, roughly (Python's objects included)
_OVERHEAD = 650  # bytes a message's dict, tuple, keys and turn id cost beyond its text, measured


@dataclass(frozen=True)
class _Copy:
    lo: int
    last: int
    messages: list[tuple[int, int | None, dict[str, Any]]]  # (seq, turn seq, message)
    size: int


class HistoryCache:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._copies: OrderedDict[uuid.UUID, _Copy] = OrderedDict()
        self._bytes = 0

    def after(self, session_uid: uuid.UUID) -> int:
        """The seq up to which the session's copy holds its messages; 0 without a copy."""
        with self._lock:
            copy = self._copies.get(session_uid)
            return copy.last if copy is not None else 0

    def window(
        self, session_uid: uuid.UUID, since: WindowSince, after: int
    ) -> list[dict[str, Any]] | None:
        """The window's messages, turn by turn, from the session's copy and `since` (read
        asking for the messages after `after`), which then become its copy; None if the copy
        is not the one that read asked after (read the window again with `after` 0)."""
        with self._lock:
            copy = self._copies.pop(session_uid, None)
            if copy is not None:
                self._bytes -= copy.size
            kept: list[tuple[int, int | None, dict[str, Any]]] = []
            size = 0
            if after:
                # A counter gone back (a database restored to an earlier point) would have
                # the copy serve messages whose seqs are reused: read the window whole.
                if (copy is None or copy.last != after or since.lo < copy.lo
                        or since.last < after):  # fmt: skip
                    return None
                start = _first_at(copy.messages, since.lo)
                kept = copy.messages[start:]
                # The copy's size less what left the window: only the messages that moved
                # are measured, not the whole window at every claim.
                size = copy.size - sum(_size(m[2]) for m in copy.messages[:start])
            messages = kept + since.messages
            if since.head:
                size += sum(_size(m[2]) for m in since.messages)
                self._keep(session_uid, _Copy(since.lo, since.last, messages, size))
        window = sorted((m for m in messages if since.holds(m[1])), key=lambda m: (m[1], m[0]))
        return [m[2] for m in window]

    def forget(self, session_uid: uuid.UUID) -> None:
        """Drop the session's copy (its next claim reads the window whole)."""
        with self._lock:
            copy = self._copies.pop(session_uid, None)
            if copy is not None:
                self._bytes -= copy.size

    def sessions(self) -> int:
        with self._lock:
            return len(self._copies)

    def _keep(self, session_uid: uuid.UUID, copy: _Copy) -> None:
        if copy.size > self._max_bytes:
            return
        self._copies[session_uid] = copy
        self._bytes += copy.size
        while self._bytes > self._max_bytes:
            _, dropped = self._copies.popitem(last=False)
            self._bytes -= dropped.size


def _first_at(messages: list[tuple[int, int | None, dict[str, Any]]], seq: int) -> int:
    """The index of the first message numbered `seq` or later (`messages` in seq order)."""
    return bisect.bisect_left(messages, seq, key=lambda m: m[0])


def _size(message: dict[str, Any]) -> int:
    # sys.getsizeof counts a str's width (1, 2 or 4 bytes a character) and header.
    calls = message.get("tool_calls") or ()
    return (_OVERHEAD + sys.getsizeof(message.get("content") or "")
            + sum(2 * len(str(call)) for call in calls))  # fmt: skip
