"""Following one session's events for a stream: every event after a position, in id order,
exactly once, from the table and then from notifications.

`follow_steps` is the logic, driven two ways: `follow` blocks on the inbox (a thread per
stream: gRPC, any WSGI server), `Follower.advance` never blocks on it (talon.serve's stream
hub, where thousands of open streams share a few threads).

The caller subscribes to the session's notifications before `SessionService.open_stream`
reads, so an event committed after that read arrives in the inbox. Notifications carry the
events themselves when they fit; anything out of order, a gap, an oversized batch or a
listener reconnect falls back to reading the table, which is the truth, and so does a quiet
stream once a minute.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from talon.sessions.events import READ_LIMIT, TERMINAL_TURN_EVENTS
from talon.sessions.service import SessionService, StreamStart
from talon.store.notify import Inbox

KEEP_ALIVE = None  # yielded when a heartbeat interval passes without events
# A quiet stream looks at the table this often (at its first heartbeat after), in case a
# notification went missing: cheap for one stream, not for the thousands a gateway holds.
RECHECK_SECONDS = 60.0


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a stream its reader may no longer follow (`reason`: why)."""

    reason: str
    message: str


EXPIRED = StreamEnd("token_expired", "the token this stream was opened with expired")


@dataclass(frozen=True)
class FollowOptions:
    until_turn_end: bool = False  # stop once no turn is open, after one ended (or none was)
    until_turn: str | None = None  # stop right after this turn's terminal event
    heartbeat: float = 15.0
    max_seconds: float = 600.0
    # Whether the reader may still follow: None, or a StreamEnd saying why not. Asked when the
    # inbox signals that something may have changed (a revocation of the reader's token is
    # delivered to it) and at every heartbeat.
    access: Callable[[], StreamEnd | None] | None = None
    # When the reader's access ends on its own (its token's expiry), as time.monotonic().
    access_until: float | None = None


Item = dict[str, Any] | StreamEnd | None


@dataclass(frozen=True)
class Wait:
    """Yielded by `follow_steps` when it has nothing to send: send it the inbox's items that
    arrive within `seconds` ([] if none do)."""

    seconds: float


def follow(
    sessions: SessionService, inbox: Inbox, start: StreamStart, options: FollowOptions
) -> Iterator[Item]:
    """Event dicts (as `Event.to_dict`), KEEP_ALIVE between them when quiet, and a final
    StreamEnd if the reader's access ends while the stream is open; blocks on the inbox."""
    follower = Follower(follow_steps(sessions, start, options), inbox)
    try:
        while True:
            items, wait = follower.advance()
            yield from items
            if wait is None:
                return
            inbox.wait(wait)
    finally:
        follower.close()


class Follower:
    """`follow_steps` driven without blocking: `advance` returns what is ready to send and
    how long until it must be asked again (None: the stream is over). Ask again sooner when
    the inbox has items (`Inbox.on_item`)."""

    def __init__(self, steps: Generator[Item | Wait, list[str | None], None], inbox: Inbox):
        self._steps = steps
        self._inbox = inbox
        # When the Wait the steps are suspended at is over; None: suspended after an item
        # (or not started), so they go on at once.
        self._until: float | None = None

    def advance(self, max_items: int = 0) -> tuple[list[Item], float | None]:
        """Up to `max_items` items (0: all that are ready); when there may be more, the
        wait returned is 0."""
        out: list[Item] = []
        try:
            if self._until is None:
                step = next(self._steps)
            else:
                items = self._inbox.get(0)
                left = self._until - time.monotonic()
                if not items and left > 0:
                    return out, left
                self._until = None
                step = self._steps.send(items)
            while True:
                if isinstance(step, Wait):
                    items = self._inbox.get(0)  # arrived while the table was read
                    if not items:
                        self._until = time.monotonic() + step.seconds
                        return out, step.seconds
                    step = self._steps.send(items)
                else:
                    out.append(step)
                    if len(out) == max_items:
                        return out, 0.0
                    step = next(self._steps)
        except StopIteration:
            return out, None

    def close(self) -> None:
        self._steps.close()


def follow_steps(
    sessions: SessionService, start: StreamStart, options: FollowOptions
) -> Generator[Item | Wait, list[str | None], None]:
    """What `follow` yields, and a Wait whenever it has to wait for notifications."""
    uid = str(start.session_uid)
    ends_at = time.monotonic() + options.max_seconds
    access_until = options.access_until if options.access_until is not None else math.inf
    last = start.position
    batch = [event.to_dict() for event in start.events]
    open_turns: int | None = start.open_turns
    full = len(batch) >= READ_LIMIT
    first, turn_ended, read = True, False, False
    checked = time.monotonic()
    while True:
        for event in batch:
            last = event["id"]
            yield event
            if event["turnId"] == options.until_turn and event["type"] in TERMINAL_TURN_EVENTS:
                return
        ended_now = any(event["type"] in TERMINAL_TURN_EVENTS for event in batch)
        turn_ended = turn_ended or ended_now
        if options.until_turn_end:
            if ended_now:
                # The last terminal event's count is as of its commit, which may be newer than
                # a count taken before the events were read.
                reported = _open_after(batch)
                if reported is not None:
                    open_turns = reported
                elif open_turns is None:
                    read = True  # is another turn open? only the table knows
            if open_turns == 0 and (first or turn_ended):
                return
        first = False
        if read or full:
            checked = time.monotonic()
            events, open_turns = sessions.read_state(start.session_uid, last)
            if open_turns is None:
                return  # the session was deleted
            batch = [event.to_dict() for event in events]
            full, read = len(batch) >= READ_LIMIT, False
            continue
        now = time.monotonic()
        if access_until <= now:
            yield EXPIRED
            return
        remaining = ends_at - now
        if remaining <= 0:
            return
        items = yield Wait(min(options.heartbeat, remaining, access_until - now))
        open_turns = None
        if not items or None in items:
            ended = options.access() if options.access is not None else None
            if ended is not None:
                yield ended
                return
        if not items:
            if time.monotonic() >= access_until:
                batch = []  # nothing more for this reader: the loop ends the stream
                continue
            yield KEEP_ALIVE
            batch, read = [], time.monotonic() - checked >= RECHECK_SECONDS
            continue
        batch, read = _in_order(items, uid, last)


def _open_after(batch: list[dict[str, Any]]) -> int | None:
    """Open turns after `batch`, from its last terminal event's `openTurns` (the count when
    it committed) and any turns queued after it; None if the event does not say."""
    for index in range(len(batch) - 1, -1, -1):
        event = batch[index]
        if event["type"] in TERMINAL_TURN_EVENTS:
            reported = event["data"].get("openTurns")
            if not isinstance(reported, int):
                return None
            later = batch[index + 1 :]
            return reported + sum(e["type"] == "turn.queued" for e in later)
    return None


def _in_order(items: list[str | None], uid: str, last: int) -> tuple[list[dict[str, Any]], bool]:
    """The events that continue from `last`, and whether the table must be read (a gap, a
    notification without events, or one from another session of the same name)."""
    batch: list[dict[str, Any]] = []
    expected = last + 1
    for item in items:
        sender, _, carried = (item or "").partition(" ")
        if sender != uid or not carried:
            return batch, True
        for event in json.loads(carried):
            if event["id"] < expected:
                continue  # already sent (read from the table before it was notified)
            if event["id"] > expected:
                return batch, True
            batch.append(event)
            expected += 1
    return batch, False
