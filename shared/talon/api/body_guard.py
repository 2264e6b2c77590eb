"""Request bodies counted while read, never read past the limit, and on a deadline.

functions-framework gives the application the WSGI server's own input stream, and its
`read_request` after-request hook reads whatever is left of every body into memory. A WSGI
middleware (installed outermost, so Flask, the gateway and that hook all read through it)
puts a `GuardedInput` in its place:

- no more than `max_body_bytes + 1` bytes are ever read (one past the limit, so a body over
  it is recognised as such), whoever reads;
- the body must arrive within `body_seconds` of the first read. When the time is up the
  server socket's read side is shut from a timer thread: a read blocked in `recv()` returns
  at once, under gunicorn and werkzeug alike, and the read raises RequestTimeout (408). A
  per-`recv()` socket timeout would not do: gunicorn reads a body in a loop of `recv()`s,
  and a client sending a byte just before each timeout would never be cut off.

`body_pending` says whether a request's body was left (partly) unread; see unread_body.py
for what is done about it.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from talon.api.deadlines import Deadlines, Timer
from talon.api.limits import RequestLimits
from talon.errors import RequestTimeout

ENVIRON_KEY = "talon.body"
SERVER_SOCKETS = ("gunicorn.socket", "werkzeug.socket")
_PIECE = 64 * 1024  # at most this much per read from the server's stream

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def server_socket(environ: dict[str, Any]) -> socket.socket | None:
    for key in SERVER_SOCKETS:
        sock = environ.get(key)
        if isinstance(sock, socket.socket):
            return sock
    return None


def declares_body(environ: dict[str, Any]) -> bool:
    length = environ.get("CONTENT_LENGTH") or ""
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    return chunked or (length.isdigit() and int(length) > 0)


class GuardedInput(io.RawIOBase):
    """`wsgi.input` as everything inside the middleware reads it (see the module doc)."""

    def __init__(
        self,
        raw: Any,
        *,
        declared: int | None,
        cap: int,
        seconds: float,
        sock: socket.socket | None,
        deadlines: Deadlines,
    ) -> None:
        super().__init__()
        self._raw = raw
        self.declared = declared  # Content-Length; None when chunked
        self.cap = cap
        self.seconds = seconds
        self.received = 0
        self.complete = declared == 0  # the whole body has been read
        self.ended = self.complete  # nothing more to read: complete, or the client went away
        self.expired = False
        self._sock = sock
        self._deadlines = deadlines
        self._deadline: float | None = None
        self._timer: Timer | None = None
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes (all, up to the cap, when negative): fewer only at the end of
        the body or at the cap, like a buffered file, so one read gets a whole small body."""
        wanted = self.cap - self.received if size is None or size < 0 else size
        out = bytearray()
        while len(out) < wanted and not self.ended:
            room = min(wanted - len(out), self.cap - self.received, _PIECE)
            if self.declared is not None:
                room = min(room, self.declared - self.received)
            if room <= 0:
                break
            piece = self._read_raw(room)
            if not piece:
                # The end of a chunked body; before the declared length, a client gone.
                self._end(complete=self.declared is None)
                break
            out += piece
            self.received += len(piece)
            if self.declared is not None and self.received >= self.declared:
                self._end(complete=True)
        return bytes(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def stop(self) -> None:
        """Read nothing more: what is left of the body stays unread, by the server too."""
        self.cap = self.received
        self._cancel()
        # gunicorn closes a connection whose body reader failed instead of reading the rest
        # of the body for a next request. Without this, once the read side is shut
        # (unread_body.leave_unread) a moment with nothing queued looks to it like the end of
        # the body, and what the client sends next is parsed as a request: a request line
        # of unlimited length under functions-framework (measured: 140 MB taken in this way).
        if hasattr(self._raw, "failed"):
            self._raw.failed = True

    def close(self) -> None:
        self._cancel()
        super().close()

    def _read_raw(self, size: int) -> bytes:
        self._arm()
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._expire()
        if self.expired:
            raise self._timeout()
        try:
            piece: bytes = self._raw.read(size)
        except Exception as exc:
            if self.expired:  # the read was cut off by the deadline
                raise self._timeout() from exc
            raise
        if self.expired:
            raise self._timeout()
        return piece

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.seconds
            if self._sock is not None:
                self._timer = self._deadlines.call_at(self._deadline, self._expire)

    def _expire(self) -> None:
        with self._lock:
            if self.ended or self.expired:
                return
            self.expired = True
        if self._sock is not None:
            # Ends a recv() blocked on this socket in the serving thread; the response can
            # still be written (the write side stays open).
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)

    def _end(self, *, complete: bool) -> None:
        with self._lock:
            self.ended = True
            self.complete = complete
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timeout(self) -> RequestTimeout:
        return RequestTimeout(
            f"the request body did not arrive within {self.seconds:g} seconds",
            [{"path": "(body)", "message": f"{self.received} bytes arrived in time"}],
        )


class BodyGuard:
    """WSGI middleware: every request's `wsgi.input` becomes a `GuardedInput`."""

    def __init__(self, app: WSGIApp, limits: Callable[[], RequestLimits]) -> None:
        self.app = app
        self.limits = limits
        self.deadlines = Deadlines()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        limits = self.limits()
        length = environ.get("CONTENT_LENGTH") or ""
        guarded = GuardedInput(
            environ["wsgi.input"],
            declared=int(length) if length.isdigit() else None,
            cap=limits.max_body_bytes + 1,
            seconds=limits.body_seconds,
            sock=server_socket(environ),
            deadlines=self.deadlines,
        )
        if not declares_body(environ):
            # Nothing to read (and under werkzeug reading would wait for the next request).
            guarded.ended = guarded.complete = True
        environ["wsgi.input"] = guarded
        environ[ENVIRON_KEY] = guarded
        try:
            return self.app(environ, start_response)
        finally:
            guarded.close()


def body_pending(environ: dict[str, Any]) -> bool:
    """Whether the request declared a body that has not been read to its end (a body cut
    short by the client counts: werkzeug's stream would raise again on the next read)."""
    guarded = environ.get(ENVIRON_KEY)
    if isinstance(guarded, GuardedInput):
        return not guarded.complete
    return declares_body(environ)  # not guarded: assume unread
