"""Open event streams held by one thread's event loop instead of a thread each.

A stream is handed over once its response head and first events are sent (api/sse.py).
From then on the hub owns its socket: it watches for the client going away, writes what the
stream produces (framed as HTTP/1.1 chunks when the response is chunked) without ever
blocking on a client, and asks the stream for more when it says it may have some (its
inbox woke it) or when the time it asked for is up. Asking may read the database, so it runs
on a small pool, never on the loop, and never twice at once for one stream.

A client that reads slower than its stream produces is cut off once MAX_BUFFERED bytes wait
for it (it resumes from its Last-Event-ID and misses nothing); one that sends anything but
its end of the connection is ignored. Stopping the hub ends every stream cleanly, and their
clients resume elsewhere.
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
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

log = logging.getLogger(__name__)
MAX_BUFFERED = 1 << 20
_RECV = 4096
_SEND = 256 * 1024


class Program(Protocol):
    """What the hub drives (api.sse.EventStream)."""

    def advance(self) -> tuple[bytes, float | None]: ...

    def on_ready(self, wake: Callable[[], None]) -> None: ...

    def finish(self) -> None: ...


class _Stream:
    __slots__ = ("again", "buffer", "chunked", "closing", "deadline", "ended", "program",
                 "running", "sock", "writing")  # fmt: skip

    def __init__(self, sock: socket.socket, program: Program, chunked: bool) -> None:
        self.sock = sock
        self.program = program
        self.chunked = chunked
        self.buffer = bytearray()
        self.deadline = 0.0
        self.running = False  # an advance is on the pool
        self.again = False  # woken while it ran: advance once more
        self.ended = False  # the program said it is over: close once the buffer is sent
        self.closing = False  # close as soon as no advance runs
        self.writing = False  # registered for EVENT_WRITE


class StreamHub:
    def __init__(self, workers: int = 4) -> None:
        self._workers = workers
        self._selector = selectors.DefaultSelector()
        self._streams: dict[socket.socket, _Stream] = {}
        self._timers: list[tuple[float, int, _Stream]] = []
        self._sequence = 0
        self._inbox: deque[Callable[[], None]] = deque()  # work for the loop, from any thread
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False  # the loop is ending its streams
        self._stopped = False  # no stream is taken over any more

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def adopt(self, sock: socket.socket, program: Program, chunked: bool) -> None:
        """Take a stream over (from any thread): from now on the hub owns `sock`."""
        if not self._start():  # stopped: end it as stopping would have
            with contextlib.suppress(OSError):
                if chunked:
                    sock.send(b"0\r\n\r\n")
                sock.close()
            program.finish()
            return
        stream = _Stream(sock, program, chunked)
        self._call_soon(lambda: self._add(stream))

    def stop(self, timeout: float = 5.0) -> None:
        """End every stream (their clients see a clean end and resume) and the loop."""
        with self._lock:
            self._stopped = True
        if self._thread is None:
            return
        self._call_soon(self._shut_down)
        self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- from any thread --------------------------------------------------------------------

    def _start(self) -> bool:
        """Whether the loop runs (started on first use); False once stopped."""
        with self._lock:
            if self._stopped:
                return False
            if self._thread is None:
                # Started in the process that serves (gunicorn forks its workers first).
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="talon-stream")
                self._selector.register(self._wake_r, selectors.EVENT_READ, None)
                self._thread = threading.Thread(target=self._run, name="talon-streams",
                                                daemon=True)  # fmt: skip
                self._thread.start()
            return True

    def _call_soon(self, work: Callable[[], None]) -> None:
        with self._lock:
            self._inbox.append(work)
            if self._woken:
                return
            self._woken = True
        with contextlib.suppress(BlockingIOError, OSError):  # full: the loop wakes anyway
            self._wake_w.send(b"\0")

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            timeout = self._next_timeout()
            for key, events in self._selector.select(timeout):
                if key.fileobj is self._wake_r:
                    self._drain_wakeups()
                    continue
                stream = key.data
                if events & selectors.EVENT_READ:
                    self._on_readable(stream)
                if events & selectors.EVENT_WRITE and stream.sock in self._streams:
                    self._flush(stream)
            self._fire_timers()
            if self._stopping and not self._streams:
                break
        self._selector.close()

    def _drain_wakeups(self) -> None:
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
        if self._stopping:
            self._streams[stream.sock] = stream
            self._close(stream, clean=True)
            return
        stream.sock.setblocking(False)
        self._streams[stream.sock] = stream
        self._selector.register(stream.sock, selectors.EVENT_READ, stream)
        stream.program.on_ready(lambda: self._call_soon(lambda: self._advance(stream)))
        self._advance(stream)

    def _advance(self, stream: _Stream) -> None:
        if stream.closing or stream.ended or stream.sock not in self._streams:
            return
        if stream.running:
            stream.again = True
            return
        stream.running = True
        assert self._pool is not None
        self._pool.submit(self._run_program, stream)

    def _run_program(self, stream: _Stream) -> None:
        """On the pool: one step of the program, its result handed back to the loop."""
        try:
            data, wait = stream.program.advance()
        except Exception:
            log.exception("stream hub: a stream failed; its client will resume")
            data, wait = b"", None
            stream.closing = True  # no clean end: the client must not think it is complete
        self._call_soon(lambda: self._advanced(stream, data, wait))

    def _advanced(self, stream: _Stream, data: bytes, wait: float | None) -> None:
        stream.running = False
        if stream.closing:
            self._close(stream, clean=False)
            return
        if data:
            self._send(stream, data)
        if wait is None:
            stream.ended = True
            self._send(stream, b"")
        elif stream.again:
            stream.again = False
            self._advance(stream)
        else:
            self._set_timer(stream, time.monotonic() + wait)
        if stream.sock in self._streams and not stream.buffer and stream.ended:
            self._close(stream, clean=True)

    def _send(self, stream: _Stream, data: bytes) -> None:
        if stream.sock not in self._streams:
            return
        if stream.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"
        stream.buffer += data
        if len(stream.buffer) > MAX_BUFFERED:
            log.info("stream hub: a client fell %d bytes behind; cut off", len(stream.buffer))
            self._end(stream, clean=False)
            return
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        try:
            while stream.buffer:
                sent = stream.sock.send(stream.buffer[:_SEND])
                del stream.buffer[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._end(stream, clean=False)
            return
        wants_write = bool(stream.buffer)
        if wants_write != stream.writing:
            stream.writing = wants_write
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants_write else 0)
            self._selector.modify(stream.sock, mask, stream)
        if not stream.buffer and stream.ended:
            self._close(stream, clean=True)

    def _on_readable(self, stream: _Stream) -> None:
        try:
            data = stream.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._end(stream, clean=False)

    def _end(self, stream: _Stream, clean: bool) -> None:
        """Close now, or (an advance running) as soon as it returns."""
        if stream.running:
            stream.closing = True
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(stream.sock)
            return
        self._close(stream, clean)

    def _close(self, stream: _Stream, clean: bool) -> None:
        if self._streams.pop(stream.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(stream.sock)
        if clean and not stream.ended and stream.chunked:
            with contextlib.suppress(OSError):  # best effort: the last chunk, then close
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

    def _next_timeout(self) -> float:
        if self._stopping:
            return 0.05
        while self._timers:
            deadline, _, stream = self._timers[0]
            if stream.deadline != deadline or stream.sock not in self._streams:
                heapq.heappop(self._timers)  # superseded or closed
                continue
            return max(0.0, deadline - time.monotonic())
        return 60.0

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            deadline, _, stream = heapq.heappop(self._timers)
            if stream.deadline == deadline and stream.sock in self._streams:
                self._advance(stream)

    def _shut_down(self) -> None:
        self._stopping = True
        for stream in list(self._streams.values()):
            self._end(stream, clean=True)
