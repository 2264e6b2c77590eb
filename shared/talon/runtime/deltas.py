"""Streamed answer text, written as `message.delta` events in time-boxed batches."""

from __future__ import annotations

import time
from typing import Any

from talon.runtime.journal import MODEL, Lease, renew
from talon.sessions import events
from talon.store.database import Database

DELTA_FLUSH_SECONDS = 0.15


class DeltaBuffer:
    """Collects streamed answer text and writes it as `message.delta` events at most every
    DELTA_FLUSH_SECONDS, so a slow answer streams live without a commit per token. What is
    left when the call ends goes out with the step's completion, in the same transaction."""

    def __init__(self, db: Database, lease: Lease, idx: int) -> None:
        self._db = db
        self._lease = lease
        self._idx = idx
        self._parts: list[str] = []
        self._last_flush = time.monotonic()
        self._sent = False  # some text of this call already went out
        self._reset = False  # ...and an attempt failed since: readers must discard it

    def attempt_failed(self, label: str, error: Exception) -> None:
        """A model attempt failed mid-answer; the retry starts the text over."""
        self._parts = []
        self._reset = self._reset or self._sent

    def add(self, text: str) -> None:
        self._parts.append(text)
        if time.monotonic() - self._last_flush >= DELTA_FLUSH_SECONDS:
            with self._db.transaction() as tx:
                renew(tx, self._lease)
                events.append(tx, self._lease.session_uid, self.drain(), self._lease.turn_id)

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        self._last_flush = time.monotonic()
        if not self._parts:
            return []
        text, self._parts = "".join(self._parts), []
        data: dict[str, Any] = {"step": MODEL, "index": self._idx, "text": text}
        if self._reset:
            data["reset"] = True  # drop the text of earlier deltas of this step
            self._reset = False
        self._sent = True
        return [("message.delta", data)]
