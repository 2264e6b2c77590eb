"""Slots for open SSE streams, per process and per token.

Under a thread-per-request server each open stream (an SSE response, a gRPC StreamEvents
call) holds one of the server's threads for up to `maxSeconds`: without a cap, a reader
opening as many streams as there are threads leaves none for anything else (issue 19). So a
stream takes a slot before anything else is done for it (no token lookup, no database work):
at most `gateway.maxOpenStreams` per process (`busy`: HTTP 503, gRPC UNAVAILABLE) and
`gateway.maxStreamsPerToken` per bearer token (`too_many_streams`: HTTP 429, gRPC
RESOURCE_EXHAUSTED); the HTTP answers carry Retry-After. Under talon.serve an SSE stream
holds no thread once open (api/sse.py): the caps are then counted in thousands, bounded by
the open-file limit. The slot is given back when the stream ends for any reason
(maxSeconds, untilTurnEnd, stream.end, an error, the client gone), or at once when it is
refused.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass

from talon.errors import Busy, TooManyStreams

# A client told to wait this long finds slots freed by streams ending (maxSeconds) or by
# other readers; long enough that a refused dashboard does not hammer the instance.
STREAM_RETRY_AFTER_SECONDS = 5


# Streams per process by default where they hold no thread (talon.serve's stream hub): what
# bench/streams.py --hub showed one process holding well within 1 GiB.
HUB_STREAMS = 10_000
# Open files kept for everything but streams: gunicorn accepts up to 1,000 connections
# (worker_connections), plus the database pool, the listener, logs.
FILE_MARGIN = 1536


def hub_stream_caps(max_open: int, per_token: int, open_files: int) -> tuple[int, int]:
    """(streams per process, streams per token) where streams hold no thread, given the
    settings (0: derived) and the process's open-file limit: each stream is one socket."""
    room = max(1, open_files - FILE_MARGIN)
    streams = max(1, min(max_open or HUB_STREAMS, room))
    return streams, min(streams, max(1, per_token or streams // 4))


def stream_caps(threads: int, max_open: int, per_token: int) -> tuple[int, int]:
    """(streams per process, streams per token) for a server whose requests with a token can
    count on `threads` threads, given the settings (0: derived). By default streams take
    three quarters of those threads, so the rest always serve other requests, and one
    token a quarter of the streams."""
    streams = max(1, max_open or threads * 3 // 4)
    return streams, min(streams, max(1, per_token or streams // 4))


@dataclass
class StreamLease:
    """One held slot; `release` is idempotent (a response may be closed more than once)."""

    slots: StreamSlots
    key: bytes
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slots._give_back(self.key)


class StreamSlots:
    def __init__(self, size: int, per_token: int) -> None:
        self.size = size
        self.per_token = per_token
        self._by_token: Counter[bytes] = Counter()
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, secret: bytes) -> StreamLease:
        """A slot for a stream asked for with this bearer secret; raises Busy or
        TooManyStreams. The secret is kept only as its digest."""
        key = hashlib.sha256(secret).digest()
        with self._lock:
            if self._by_token[key] >= self.per_token:
                raise TooManyStreams(
                    f"this token has {self.per_token} streams open on this instance, as many "
                    f"as it may (gateway.maxStreamsPerToken); close one or retry after "
                    f"{STREAM_RETRY_AFTER_SECONDS} s"
                )
            if self._used >= self.size:
                raise Busy(
                    f"this instance has {self.size} streams open, as many as it serves at once "
                    f"(gateway.maxOpenStreams); retry after {STREAM_RETRY_AFTER_SECONDS} s"
                )
            self._used += 1
            self._by_token[key] += 1
        return StreamLease(self, key)

    def _give_back(self, key: bytes) -> None:
        with self._lock:
            self._used -= 1
            self._by_token[key] -= 1
            if self._by_token[key] <= 0:
                del self._by_token[key]
