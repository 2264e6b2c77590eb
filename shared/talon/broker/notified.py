"""The Postgres broker's notified rows: what the outbox notifications said since its
dispatcher last looked (`broker/postgres.py`), noted on the listener's thread.

A dispatch row's notification carries the row ("<topic> <id> <payload>"), so it can be
handed to a handler without a claim; anything else only says "claim".
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_HINTS = 1_000  # notified rows kept for idle handlers; beyond, a claim takes them

Notified = tuple[int, str, dict[str, Any]]  # an outbox row's id, topic and payload


@dataclass
class Hints:
    """What the outbox notifications said since the dispatcher last looked: rows it may hand
    out unclaimed (`rows`), and whether anything else happened that only a claim finds
    (`claim`: another topic's row, a reconnect, more rows than idle handlers)."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    rows: deque[Notified] = field(default_factory=deque)
    claim: bool = True
    count: int = 0  # notifications so far (reconnects count as one)

    def take(self, free: int) -> tuple[int, list[Notified], bool]:
        """(the notification count now, up to `free` notified rows to hand out, whether to
        claim instead). Notified rows go first, a claim already asked for included (it
        excludes them); a claim then takes whatever they left."""
        with self.cond:
            seen = self.count
            rows: list[Notified] = []
            while self.rows and len(rows) < free:
                rows.append(self.rows.popleft())
            if self.rows:  # more than the idle handlers: a claim takes the rest
                self.claim = True
            claiming = self.claim and not rows
            if claiming:
                self.rows.clear()
                self.claim = False
            return seen, rows, claiming

    def ask_claim(self) -> None:
        with self.cond:
            self.claim = True


def note(hints: Hints, topics: tuple[str, ...], payload: str | None) -> None:
    """The listener's callback for an outbox notification: "<topic> <row id> <payload>" for
    a row that may be handed out unclaimed; anything else (or None: a reconnect) asks for a
    claim."""
    row = None
    if payload is not None:
        topic, _, rest = payload.partition(" ")
        row_id, _, body = rest.partition(" ")
        if topic in topics and row_id.isdigit() and body:
            with contextlib.suppress(ValueError):
                data = json.loads(body)
                if isinstance(data, dict):
                    row = (int(row_id), topic, data)
    with hints.cond:
        hints.count += 1
        if row is None or len(hints.rows) >= MAX_HINTS:  # a burst: the claim takes them all
            hints.claim = True
            hints.rows.clear()
        else:
            hints.rows.append(row)
        hints.cond.notify_all()


def wait_beyond(hints: Hints, seen: int, timeout: float, stop: threading.Event) -> bool:
    """Block until a notification comes after the count `seen`, or `timeout` passes, or
    `stop` is set (looked at every half second); True if a notification has come."""
    deadline = time.monotonic() + timeout
    with hints.cond:
        while hints.count <= seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.is_set():
                return False
            hints.cond.wait(min(remaining, 0.5))
        return True
