"""A session's SSE stream as one object any server can drive.

Under a thread-per-request server the response body blocks its thread on the stream's inbox
until the stream ends. Under Talon's own server (talon.serve) the body is the `retry:` line
and the first events when they are few (FIRST_WRITE_BYTES: they fit in the fresh
connection's send buffer, so writing them cannot hold the request thread on a client that
does not read), after which the server hands the connection over to its stream hub, which
calls `advance` whenever the inbox has items or the stream's wait is over (more first events
included), and `finish` at the end. An open stream holds no thread at all.

The environ keys are the whole contract with the server: it sets HUB_KEY on requests it can
take a stream over for; the stream sets HANDOVER_KEY to itself when it will be handed over,
and from then on the server must either hand it over or `finish` it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from talon.actions.stream_slots import StreamLease
from talon.sessions.follow import KEEP_ALIVE, Follower, Item, StreamEnd
from talon.store.notify import Inbox
from talon.telemetry import metrics

EVENT_STREAM = "text/event-stream"
HUB_KEY = "talon.stream_hub"
HANDOVER_KEY = "talon.stream_handover"
# Where the front door leaves a stream's slot for the stream to take (and give back when it
# ends); a slot still there when the response is done was never taken, and is given back then.
LEASE_KEY = "talon.stream_lease"
RETRY_LINE = b"retry: 2000\n\n"
JSON = "application/json"
# Events formatted per `advance`: a stream never builds a whole history in memory at once.
ADVANCE_ITEMS = 100
# A handed-over stream's first events go out with its head when they fit in this much: a
# fresh connection's empty send buffer takes them at once, so the request thread does not
# wait on the client, and the hub is spared a round trip for the common short start.
FIRST_WRITE_BYTES = 16 * 1024


def asks_for_events(accept: str) -> bool:
    """Whether an Accept header asks for an event stream over JSON: `text/event-stream`
    (whatever its parameters) with a quality above JSON's. Ranges (`*/*`, `text/*`), ties
    and no header at all get JSON: the stream is only for a client that names it."""
    events = json_quality = 0.0
    for entry in accept.split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media.lower() == EVENT_STREAM:
            events = max(events, quality)
        elif media.lower() == JSON:
            json_quality = max(json_quality, quality)
    return events > json_quality


class EventStream:
    def __init__(
        self, follower: Follower, inbox: Inbox, lease: StreamLease | None, namespace: str
    ) -> None:
        self._follower = follower
        self._inbox = inbox
        self._lease = lease
        self._namespace = namespace
        self._handed_over = False
        self._pending = b""  # produced in the request thread, for the hub to send
        self._finished = False
        self._finish_lock = threading.Lock()
        metrics.open_streams.add(1, {"namespace": namespace})

    def hand_over(self, environ: MutableMapping[str, Any]) -> bool:
        """Whether the server will drive this stream (and owns it from now on)."""
        if environ.get(HUB_KEY) is None:
            return False
        environ[HANDOVER_KEY] = self
        self._handed_over = True
        return True

    def body(self) -> Iterator[bytes]:
        """The response body: the `retry:` line, then (unless handed over) every event until
        the stream ends."""
        data, wait = self.advance()
        if self._handed_over:
            if len(data) > FIRST_WRITE_BYTES:
                self._pending = data  # the hub sends it, never blocking on the client
                data = b""
            yield RETRY_LINE + data
            return
        yield RETRY_LINE + data
        while wait is not None:
            self._inbox.wait(wait)
            data, wait = self.advance()
            if data:
                yield data

    def advance(self) -> tuple[bytes, float | None]:
        """What is ready to send now, and the seconds until `advance` must be called again
        at the latest (sooner once `on_ready`'s callback is called); None: the stream is over.
        Never blocks on the inbox; may read the database."""
        items, wait = self._follower.advance(ADVANCE_ITEMS)
        data = b"".join(_format(item) for item in items)
        if self._pending:
            data, self._pending = self._pending + data, b""
        return data, wait

    def on_ready(self, wake: Callable[[], None]) -> None:
        """Call `wake()` (from the notification listener's thread; never blocks it) when
        there may be something new for `advance`."""
        self._inbox.on_item(wake)

    def response_closed(self) -> None:
        """The WSGI response is done: the stream is over, unless it was handed over."""
        if not self._handed_over:
            self.finish()

    def finish(self) -> None:
        """Release everything the stream holds (idempotent; never while `advance` runs)."""
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        try:
            self._inbox.on_item(None)
            self._inbox.close()
            self._follower.close()
        finally:
            if self._lease is not None:
                self._lease.release()
            metrics.open_streams.add(-1, {"namespace": self._namespace})


def _format(item: Item) -> bytes:
    if item is KEEP_ALIVE:
        return b": keep-alive\n\n"
    if isinstance(item, StreamEnd):
        # No id: the reader's position stays at the last event it was sent.
        end = {"type": "stream.end", "reason": item.reason, "message": item.message}
        return f"event: stream.end\ndata: {json.dumps(end)}\n\n".encode()
    data = json.dumps(item, separators=(",", ":"))
    return f"id: {item['id']}\nevent: {item['type']}\ndata: {data}\n\n".encode()
