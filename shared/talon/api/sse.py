"""A session's SSE stream as one object any server can drive.

Under a thread-per-request server the response body blocks its thread on the stream's inbox
until the stream ends. Under Talon's own server (talon.serve) the body is only the `retry:`
line, after which the server hands the connection over to its stream hub, which calls
`advance` whenever the inbox has items or the stream's wait is over (the first events
included: nothing the stream sends is written by a request thread, which a client that does
not read would hold), and `finish` at the end. An open stream holds no thread at all.

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

HUB_KEY = "talon.stream_hub"
HANDOVER_KEY = "talon.stream_handover"
# Where the front door leaves a stream's slot for the stream to take (and give back when it
# ends); a slot still there when the response is done was never taken, and is given back then.
LEASE_KEY = "talon.stream_lease"
RETRY_LINE = b"retry: 2000\n\n"
# Events formatted per `advance`: a stream never builds a whole history in memory at once.
ADVANCE_ITEMS = 100


class EventStream:
    def __init__(
        self, follower: Follower, inbox: Inbox, lease: StreamLease | None, namespace: str
    ) -> None:
        self._follower = follower
        self._inbox = inbox
        self._lease = lease
        self._namespace = namespace
        self._handed_over = False
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
        if self._handed_over:
            yield RETRY_LINE
            return
        data, wait = self.advance()
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
        return b"".join(_format(item) for item in items), wait

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
