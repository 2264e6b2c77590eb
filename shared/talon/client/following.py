"""Following a session's stream across connections: the decisions both clients share (what to
ask for when reconnecting, what an event means, whether an ended connection ends the stream).

The gateway ends a stream after `maxSeconds` (its threads are finite), when `untilTurnEnd` is
met, or (with a final `stream.end` event) when the reader's token is revoked or expires; a
connection may also just drop. A follower resumes after the last event id it saw, so nothing
is lost or repeated, and stops only when the caller stops iterating, the turns it waits for
are over, or access ended. An instance with as many streams open as it serves answers 503
`busy` (or 429 `too_many_streams` when this token has its share) with Retry-After: the
follower waits that long plus a jitter and tries again, giving up like any failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from talon.backoff import backoff_delay
from talon.client.errors import APIError, TalonConnectionError
from talon.client.models import TERMINAL_TURN_EVENTS, Accepted, Event

MAX_FAILURES = 8  # consecutive failed connections before giving up
RETRYABLE_STATUSES = frozenset({429, 503})  # refusals the gateway asks to retry later
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is waited this long


def is_event_stream(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


class StreamEnded(Exception):
    """The gateway ended the stream for good: `reason` is `token_revoked` or `token_expired`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Follower:
    after: int | None  # the last event id seen (None: only new events)
    until_turn_end: bool
    max_seconds: int = 600
    failures: int = 0
    turn_ended: bool = False
    _open_turns: int | None = field(default=None, repr=False)

    def request(self) -> tuple[dict[str, str], dict[str, Any]]:
        headers = {"Accept": "text/event-stream"}
        if self.after is not None:
            headers["Last-Event-ID"] = str(self.after)
        params: dict[str, Any] = {"maxSeconds": self.max_seconds}
        if self.until_turn_end:
            params["untilTurnEnd"] = "true"
        return headers, params

    def event(self, name: str, data: str, event_id: str) -> Event | None:
        """An SSE event read: the Event to hand out (None for comments and the like).
        Raises StreamEnded on the gateway's final `stream.end`."""
        self.failures = 0
        if name == "stream.end":
            body = json.loads(data)
            raise StreamEnded(str(body.get("reason")), str(body.get("message")))
        if not event_id or not data:
            return None
        event = Event.model_validate(json.loads(data))
        self.after = event.id
        if event.type in TERMINAL_TURN_EVENTS:
            self.turn_ended = True
            open_turns = event.data.get("openTurns")
            self._open_turns = open_turns if isinstance(open_turns, int) else None
        elif event.type == "turn.queued":
            self._open_turns = None
        return event

    def finished(self, received: int) -> bool | None:
        """After a connection ended cleanly, having received `received` events: is the stream
        over? True when waiting for the turns to end and the last terminal event said none is
        open; None when only the session can tell (no event came: either nothing was open or
        `maxSeconds` passed in a quiet turn); False otherwise (resume)."""
        if not self.until_turn_end:
            return False
        if self.turn_ended and self._open_turns == 0:
            return True
        return None if received == 0 else False

    def failed(self, error: Exception) -> float:
        """A connection failed: the delay before the next attempt (raises when it is time to
        give up)."""
        self.failures += 1
        if self.failures > MAX_FAILURES:
            raise TalonConnectionError(f"the stream kept failing: {error}") from error
        return backoff_delay(self.failures, initial=0.2, maximum=5.0)

    def refused(self, error: APIError, retry_after: str | None) -> float | None:
        """The gateway refused the stream: the delay before the next attempt when it asked
        for a retry (429/503 with Retry-After: that long plus a jitter, so followers refused
        together do not come back together); None when the error is final or the follower
        has failed too often (raise it)."""
        if error.status not in RETRYABLE_STATUSES or retry_after is None:
            return None
        try:
            seconds = min(max(float(retry_after), 0.0), MAX_RETRY_AFTER)
        except ValueError:  # an HTTP date: wait as for any failure
            seconds = 0.0
        self.failures += 1
        if self.failures > MAX_FAILURES:
            return None
        return seconds + backoff_delay(self.failures, initial=0.2, maximum=5.0)


@dataclass
class TurnFollower(Follower):
    """A message posted for its events (`send_and_stream`): the same decisions, and the end
    of the posted turn, which ends the iteration."""

    turn: str | None = None  # the posted turn's id (Talon-Turn-Id), else its first event's

    def event(self, name: str, data: str, event_id: str) -> Event | None:
        # Only an event counts as progress: a POST resent after each connection that
        # dropped once its head (and `retry:` line) came must still give up in the end.
        failures = self.failures
        event = super().event(name, data, event_id)
        if event is None:
            self.failures = failures
        return event

    def accepted(self, answer: Accepted) -> None:
        """The gateway answered the message with JSON (one from before posted streams): the
        turn is followed with `stream` from where the answer says it starts."""
        self.turn, self.after = answer.turn_id, answer.stream_from

    def ends(self, event: Event) -> bool:
        if self.turn is None:
            self.turn = event.turn_id  # the first event is the message's own
        return event.turn_id == self.turn and event.type in TERMINAL_TURN_EVENTS
