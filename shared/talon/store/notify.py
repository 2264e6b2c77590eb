"""LISTEN/NOTIFY on one dedicated connection per process.

After its LISTEN commands the connection only ever receives notifications, so a background
thread reads them straight off the socket (blocking, no query per wake-up: a `SELECT 1` to
let pg8000 take them in would cost a round trip and a transaction each time) and hands them on:

- `notified(channel)` / `wait_beyond(channel, seen)`: a count of notifications to wait on,
  race-free for a reader that notes the count before it looks at the table (the broker);
- `subscribe(channel, key)`: an inbox of the payloads whose key (the text before the first
  space) matches (a stream, keyed by session, gets the events themselves);
- `watch(channel, callback)`: every payload (the token cache drops entries on revocations).

A lost connection reconnects with backoff; every inbox and watcher then gets `None`, meaning
"anything may have happened: read the truth from the tables".
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from talon.backoff import backoff_delay

log = logging.getLogger(__name__)
MAX_INBOX = 1_000
_NOTIFICATION = b"A"
_IGNORED = (b"N", b"S")  # notices and parameter status may arrive at any time


class Inbox:
    """Payloads for one subscriber; `None` items mean "re-read, something may be missed"."""

    def __init__(self, lock: threading.Lock, on_close: Callable[[Inbox], None]) -> None:
        # Its own condition on the listener's lock: a notification wakes only the streams it
        # is for, not every open stream of the process.
        self._cond = threading.Condition(lock)
        self._on_close = on_close
        self._items: deque[str | None] = deque()
        self._closed = False
        self._on_item: Callable[[], None] | None = None

    def get(self, timeout: float) -> list[str | None]:
        """Everything received so far, waiting up to `timeout` for the first; [] on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            items = list(self._items)
            self._items.clear()
            return items

    def wait(self, timeout: float) -> bool:
        """Block until there are items (left for `get`) or `timeout` passes; True if any."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def on_item(self, callback: Callable[[], None] | None) -> None:
        """Call `callback()` whenever an item arrives, instead of a thread waiting for it;
        called on the listener's thread holding its lock: it must only hand the news on
        (e.g. wake an event loop), never block. Called once at once if items are waiting."""
        with self._cond:
            self._on_item = callback
            if callback is not None and self._items:
                callback()

    def wake(self) -> None:
        """Wake the reader as a missed notification would (it re-checks what it follows),
        from any thread: e.g. when its client went away."""
        with self._cond:
            self._put(None)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _put(self, item: str | None) -> None:
        if len(self._items) >= MAX_INBOX:
            # A reader that fell this far behind re-reads the table instead.
            self._items.clear()
            item = None
        self._items.append(item)
        self._cond.notify()
        if self._on_item is not None:
            self._on_item()


class Listener:
    def __init__(self, connect: Callable[[], Any], channels: tuple[str, ...]) -> None:
        self._connect = connect
        self._channels = channels
        self._counts: dict[str, int] = defaultdict(int)
        self._inboxes: dict[tuple[str, str], list[Inbox]] = defaultdict(list)
        self._watchers: dict[str, list[Callable[[str | None], None]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # for `wait_beyond`
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="talon-listener", daemon=True)
        self._thread.start()

    def notified(self, channel: str) -> int:
        """How many notifications `channel` has had (reconnects count as one): note it before
        looking at the table, then `wait_beyond` it."""
        with self._cond:
            return self._counts[channel]

    def wait_beyond(self, channel: str, seen: int, timeout: float) -> bool:
        """Block until `channel` has had a notification since the count `seen`, or `timeout`
        passes. True if one has."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._counts[channel] <= seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(remaining)
            return True

    def subscribe(self, channel: str, key: str, *more: tuple[str, str]) -> Inbox:
        """An inbox of the payloads on `channel` whose key is `key` (and on each further
        `(channel, key)`), from now on; close it (or use it as a context manager) when done."""
        subscriptions = [(channel, key), *more]

        def unsubscribe(inbox: Inbox) -> None:
            with self._cond:
                for subscription in subscriptions:
                    inboxes = self._inboxes[subscription]
                    inboxes.remove(inbox)
                    if not inboxes:
                        del self._inboxes[subscription]

        inbox = Inbox(self._lock, unsubscribe)
        with self._cond:
            for subscription in subscriptions:
                self._inboxes[subscription].append(inbox)
        return inbox

    def watch(self, channel: str, callback: Callable[[str | None], None]) -> None:
        """Call `callback(payload)` (on the listener's thread; keep it short) for every
        notification on `channel`, and `callback(None)` whenever the connection is (re)made."""
        with self._cond:
            self._watchers[channel].append(callback)

    @property
    def connected(self) -> bool:
        """False while (re)connecting: notifications may be missed until it is True again."""
        return self._ready.is_set()

    def subscribers(self) -> int:
        with self._cond:
            return sum(len(inboxes) for inboxes in self._inboxes.values())

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # unblocks the reader
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            connection = None
            try:
                connection = self._connect()
                connection.autocommit = True
                cursor = connection.cursor()
                for channel in self._channels:
                    cursor.execute(f'LISTEN "{channel}"')
                raw, stream = (
                    getattr(connection, "_usock", None),
                    getattr(connection, "_sock", None),
                )
                if raw is None or stream is None:  # pg8000 internals moved: see pyproject
                    raise RuntimeError("this pg8000 does not expose its socket; pin 1.31.x")
                self._socket = _prepare_socket(raw)
                if self._stop.is_set():
                    break
                # Anything may have happened while we were away (or before we started).
                self._wake_all()
                self._ready.set()
                failures = 0
                while not self._stop.is_set():
                    channel, payload = _read_notification(stream)
                    self._deliver(channel, payload)
            except Exception as exc:
                if not self._stop.is_set():
                    self._ready.clear()
                    log.warning("notification listener lost its connection: %s", exc)
                    failures += 1
                    time.sleep(backoff_delay(failures, initial=0.2, maximum=5.0))
            finally:
                self._ready.clear()
                self._socket = None
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()

    def _wake_all(self) -> None:
        with self._cond:
            for channel in self._channels:
                self._counts[channel] += 1
            for inboxes in self._inboxes.values():
                for inbox in inboxes:
                    inbox._put(None)
            watchers = [w for callbacks in self._watchers.values() for w in callbacks]
            self._cond.notify_all()
        for watcher in watchers:
            watcher(None)

    def _deliver(self, channel: str, payload: str) -> None:
        key, _, data = payload.partition(" ")
        with self._cond:
            self._counts[channel] += 1
            for inbox in self._inboxes.get((channel, key), ()):
                inbox._put(data or None)
            watchers = list(self._watchers.get(channel, ()))
            self._cond.notify_all()
        for watcher in watchers:
            watcher(payload)


def _prepare_socket(sock: socket.socket) -> socket.socket:
    # Block without a timeout (a timeout mid-message would lose our place in the stream);
    # keepalives notice a peer that vanished without closing.
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if sock.family != socket.AF_UNIX and hasattr(socket, option):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return sock


def _read_exactly(stream: Any, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise ConnectionError("the notification connection was closed")
    return data


def _read_notification(stream: Any) -> tuple[str, str]:
    """The next NotificationResponse off a LISTENing connection's buffered socket file
    (protocol: code, int32 length, int32 pid, channel NUL, payload NUL)."""
    while True:
        code = _read_exactly(stream, 1)
        (length,) = struct.unpack("!i", _read_exactly(stream, 4))
        body = _read_exactly(stream, length - 4)
        if code == _NOTIFICATION:
            channel, payload, _ = body[4:].split(b"\x00", 2)
            return channel.decode(), payload.decode()
        if code not in _IGNORED:
            raise ConnectionError(f"unexpected message {code!r} on the notification connection")
