"""Open event streams held by one thread's event loop instead of a thread each.

A stream is handed over right after its response head and first line are sent (api/sse.py).
From then on the hub owns its socket: it writes what the stream produces (framed as HTTP/1.1
chunks when the response is chunked) without ever blocking on a client, notices a client
gone, and asks the stream for more when it says it may have some (its inbox woke it) or when
the time it asked for is up. Asking may read the database, so it runs on a small pool, never
on the loop, and never twice at once for one stream.

Backpressure, not buffering: a stream is not asked for more while more than LOW_WATER bytes
wait for its client (what it would produce stays in the table until then), and a client that
takes nothing for `stall_seconds` while bytes wait for it is cut off (it resumes from its
Last-Event-ID and misses nothing), as is one that sends over MAX_RECEIVED bytes after its
request. Stopping the hub ends every stream, cleanly where no bytes wait, and their clients
resume elsewhere.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Protocol

log = logging.getLogger(__name__)
LOW_WATER = 64 * 1024
MAX_RECEIVED = 64 * 1024
STALL_SECONDS = 30.0
_RECV = 4096
_SEND = 256 * 1024


class Program(Protocol):
    """What the hub drives (api.sse.EventStream)."""

    def advance(self) -> tuple[bytes, float | None]: ...

    def on_ready(self, wake: Callable[[], None]) -> None: ...

    def finish(self) -> None: ...


class _Stream:
    __slots__ = ("again", "buffer", "chunked", "closing", "closing_clean", "deadline", "ended",
                 "future", "mask", "program", "progress", "received", "running", "sock",
                 "waiting", "watch_reads")  # fmt: skip

    def __init__(
        self, sock: socket.socket, program: Program, chunked: bool, watch_reads: bool
    ) -> None:
        self.sock = sock
        self.program = program
        self.chunked = chunked
        self.watch_reads = watch_reads
        self.buffer = bytearray()
        self.deadline = 0.0
        self.progress = 0.0  # when the client last took bytes (or the buffer filled)
        self.received = 0
        self.running = False  # an advance is on the pool (`future`: queued or under way)
        self.future: Future[None] | None = None
        self.again = False  # woken while it ran: advance once more
        self.waiting = False  # woken while its client was behind: advance once it catches up
        self.ended = False  # the program said it is over: close once the buffer is sent
        self.closing = False  # close as soon as no advance runs
        self.closing_clean = True  # ...with a clean end (every `_end` that asked wanted one)
        self.mask = 0  # the selector events it is registered for


class StreamHub:
    def __init__(self, workers: int = 2, stall_seconds: float = STALL_SECONDS) -> None:
        # Few workers: each may hold a database connection, which requests need too.
        self._workers = workers
        self._stall_seconds = stall_seconds
        self._streams: dict[socket.socket, _Stream] = {}
        self._timers: list[tuple[float, int, _Stream]] = []
        self._sequence = 0
        self._inbox: deque[Callable[[], None]] = deque()  # work for the loop, from any thread
        self._woken = False
        self._lock = threading.Lock()
        # Made on first use, in the process that serves (gunicorn forks its workers after
        # building the app): none of them leaks into the arbiter or sibling workers.
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False  # the loop is ending its streams
        self._stopped = False  # no stream is taken over any more

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def adopt(
        self, sock: socket.socket, program: Program, chunked: bool, watch_reads: bool = True
    ) -> None:
        """Take a stream over (from any thread): from now on the hub owns `sock`.
        `watch_reads=False` for a connection whose read side was shut (a request body left
        unread): its end of input is then no sign of the client going."""
        stream = _Stream(sock, program, chunked, watch_reads)
        # Started and queued in one step: a stop() in between left it queued, never ended.
        if not self._call_soon(lambda: self._add(stream), start=True):  # stopped: end it here
            with contextlib.suppress(OSError):
                if chunked:
                    sock.send(b"0\r\n\r\n")
                sock.close()
            program.finish()

    def stop(self, timeout: float = 5.0) -> None:
        """End every stream (their clients see a clean end and resume) and the loop."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        if thread is None:
            return
        self._call_soon(self._shut_down)
        thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- from any thread --------------------------------------------------------------------

    def _call_soon(self, work: Callable[[], None], *, start: bool = False) -> bool:
        """Queue `work` for the loop. `start` (a stream taken over): start the loop on first
        use and queue in one step, under stop()'s lock; False (nothing queued) once stopped."""
        with self._lock:
            if start and self._stopped:
                return False
            if start and self._thread is None:
                self._selector = selectors.DefaultSelector()
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                self._wake_w.setblocking(False)
                self._selector.register(self._wake_r, selectors.EVENT_READ, None)
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="talon-stream")
                self._thread = threading.Thread(target=self._run, name="talon-streams", daemon=True)
                self._thread.start()
            self._inbox.append(work)
            wake = None if self._woken else self._wake_w
            self._woken = self._woken or wake is not None
        if wake is not None:
            with contextlib.suppress(BlockingIOError, OSError):  # full: the loop wakes anyway
                wake.send(b"\0")
        return True

    def _wake_for(self, stream: _Stream) -> None:
        self._call_soon(partial(self._advance, stream))

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        next_sweep = time.monotonic() + 1.0
        while True:
            try:
                events = self._selector.select(self._next_timeout(next_sweep))
            except Exception:
                log.exception("stream hub: select failed; its streams end")
                self._stopping = True
                events = []
            for key, mask in events:
                if key.fileobj is self._wake_r:
                    self._drain_wakeups()
                else:
                    self._guarded(key.data, self._on_events, key.data, mask)
            self._fire_timers()
            if time.monotonic() >= next_sweep:
                self._cut_stalled()
                next_sweep = time.monotonic() + 1.0
            if self._stopping:
                self._shut_down()
                if not self._streams:
                    break
        self._selector.close()

    def _guarded(self, stream: _Stream, work: Callable[..., None], *args: object) -> None:
        """One stream's work: a failure ends that stream, never the loop."""
        try:
            work(*args)
        except Exception:
            log.exception("stream hub: a stream failed; its client will resume")
            with contextlib.suppress(Exception):
                self._end(stream, clean=False)

    def _drain_wakeups(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            work = list(self._inbox)
            self._inbox.clear()
            self._woken = False
        for item in work:
            try:
                item()
            except Exception:  # one stream's failure must not stop the others'
                log.exception("stream hub: a callback failed")

    def _add(self, stream: _Stream) -> None:
        assert self._selector is not None
        self._streams[stream.sock] = stream
        if self._stopping:
            self._close(stream, clean=True)
            return
        try:
            stream.sock.setblocking(False)
            self._watch(stream, writes=False)
            stream.program.on_ready(partial(self._wake_for, stream))
        except Exception:
            log.exception("stream hub: a stream could not be taken over")
            self._close(stream, clean=False)
            return
        self._advance(stream)

    def _advance(self, stream: _Stream) -> None:
        if stream.closing or stream.ended or stream.sock not in self._streams:
            return
        if stream.running:
            stream.again = True
            return
        if len(stream.buffer) > LOW_WATER:
            stream.waiting = True  # asked again once its client has caught up
            return
        stream.running = True
        assert self._pool is not None
        stream.future = self._pool.submit(self._run_program, stream)

    def _run_program(self, stream: _Stream) -> None:
        """On the pool: one step of the program, its result handed back to the loop."""
        try:
            data, wait = stream.program.advance()
        except Exception:
            log.exception("stream hub: a stream failed; its client will resume")
            self._call_soon(lambda: self._failed(stream))
            return
        self._call_soon(lambda: self._guarded(stream, self._advanced, stream, data, wait))

    def _failed(self, stream: _Stream) -> None:
        stream.running = False
        # No clean end (the client must not think it complete) unless the hub stopping asked.
        self._close(stream, clean=stream.closing and stream.closing_clean)

    def _advanced(self, stream: _Stream, data: bytes, wait: float | None) -> None:
        stream.running = False
        if stream.closing:
            self._close(stream, clean=stream.closing_clean)
            return
        if wait is None:
            stream.ended = True
        self._send(stream, data)
        if stream.sock not in self._streams or wait is None:
            return
        if stream.again:
            stream.again = False
            self._advance(stream)
        else:
            self._set_timer(stream, time.monotonic() + wait)

    def _send(self, stream: _Stream, data: bytes) -> None:
        if stream.chunked and data:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if stream.ended and stream.chunked:
            data += b"0\r\n\r\n"
        if data and not stream.buffer:
            stream.progress = time.monotonic()  # the stall clock starts with waiting bytes
        stream.buffer += data
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        sent_any = False
        try:
            while stream.buffer:
                sent = stream.sock.send(stream.buffer[:_SEND])
                del stream.buffer[:sent]
                sent_any = True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._end(stream, clean=False)
            return
        if sent_any:
            stream.progress = time.monotonic()
        if not stream.buffer and stream.ended:
            self._close(stream, clean=True)
            return
        self._watch(stream, writes=bool(stream.buffer))
        if stream.waiting and len(stream.buffer) <= LOW_WATER:
            stream.waiting = False
            self._advance(stream)

    def _watch(self, stream: _Stream, writes: bool) -> None:
        """Register for what the stream waits for: reads (its client going), writes."""
        assert self._selector is not None
        mask = selectors.EVENT_READ if stream.watch_reads else 0
        mask |= selectors.EVENT_WRITE if writes else 0
        if mask == stream.mask:
            return
        if not mask:
            self._selector.unregister(stream.sock)
        elif not stream.mask:
            self._selector.register(stream.sock, mask, stream)
        else:
            self._selector.modify(stream.sock, mask, stream)
        stream.mask = mask

    def _on_events(self, stream: _Stream, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._on_readable(stream)
        if mask & selectors.EVENT_WRITE and stream.sock in self._streams:
            self._flush(stream)

    def _on_readable(self, stream: _Stream) -> None:
        try:
            data = stream.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        stream.received += len(data)
        if not data:  # the client went away
            self._end(stream, clean=False)
        elif stream.received > MAX_RECEIVED:
            log.info("stream hub: a client sent %d bytes past its request: cut", stream.received)
            self._end(stream, clean=False)

    def _cut_stalled(self) -> None:
        cutoff = time.monotonic() - self._stall_seconds
        for stream in [s for s in self._streams.values() if s.buffer and s.progress < cutoff]:
            log.info("stream hub: a client took nothing for %gs with %d bytes waiting; cut off",
                     self._stall_seconds, len(stream.buffer))  # fmt: skip
            self._end(stream, clean=False)

    def _end(self, stream: _Stream, clean: bool) -> None:
        """Close now, or (an advance running) as soon as it returns; one still queued (or
        called off by the pool's shutdown at a stop) never runs."""
        if stream.running and stream.future is not None and stream.future.cancel():
            stream.running = False
        if stream.running:
            stream.closing_clean = stream.closing_clean and clean
            stream.closing = True
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(stream.sock)  # type: ignore[union-attr]
            stream.mask = 0
            return
        self._close(stream, clean)

    def _close(self, stream: _Stream, clean: bool) -> None:
        if self._streams.pop(stream.sock, None) is None:
            return
        assert self._selector is not None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(stream.sock)
        # The last chunk only after whole chunks: never inside a half-sent one.
        if clean and not stream.ended and stream.chunked and not stream.buffer:
            with contextlib.suppress(OSError):
                stream.sock.send(b"0\r\n\r\n")
        with contextlib.suppress(OSError):
            stream.sock.close()
        try:
            stream.program.finish()
        except Exception:
            log.exception("stream hub: finishing a stream failed")

    def _set_timer(self, stream: _Stream, deadline: float) -> None:
        stream.deadline = deadline
        self._sequence += 1
        heapq.heappush(self._timers, (deadline, self._sequence, stream))

    def _next_timeout(self, next_sweep: float) -> float:
        if self._stopping:
            return 0.05
        limit = max(0.0, next_sweep - time.monotonic())
        while self._timers:
            deadline, _, stream = self._timers[0]
            if stream.deadline != deadline or stream.sock not in self._streams:
                heapq.heappop(self._timers)  # superseded or closed
                continue
            return min(limit, max(0.0, deadline - time.monotonic()))
        return limit

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            deadline, _, stream = heapq.heappop(self._timers)
            if stream.deadline == deadline and stream.sock in self._streams:
                self._guarded(stream, self._advance, stream)

    def _shut_down(self) -> None:
        self._stopping = True
        for stream in list(self._streams.values()):
            self._end(stream, clean=True)
