"""LISTEN/NOTIFY wake-ups on one dedicated connection per process.

pg8000 has no blocking wait for notifications: they are read while the connection processes
another server message. A background thread therefore waits until the socket is readable
(or a short poll interval passes), runs `SELECT 1` to take the notifications in, and wakes the
threads waiting on their channel.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # upper bound on a missed wake-up (e.g. TLS-buffered bytes)


class Listener:
    def __init__(self, connect: Callable[[], Any], channels: tuple[str, ...]) -> None:
        self._connect = connect
        self._channels = channels
        self._counts: dict[tuple[str, str | None], int] = defaultdict(int)
        self._tokens: dict[str, int] = defaultdict(int)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="talon-listener", daemon=True)
        self._thread.start()

    def count(self, channel: str, payload: str | None = None) -> int:
        with self._cond:
            return self._counts[(channel, payload)]

    def wait(
        self, channel: str, timeout: float, *, payload: str | None = None, since: int | None = None
    ) -> bool:
        """Block until a notification on `channel` (with `payload`, if given) arrives after the
        count `since` (default: now), or `timeout` passes. True if one arrived."""
        key = (channel, payload)
        deadline = time.monotonic() + timeout
        with self._cond:
            start = self._counts[key] if since is None else since
            while self._counts[key] <= start:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(remaining)
            return True

    def take(self, channel: str, timeout: float) -> bool:
        """Consume one wake-up token of `channel`, waiting up to `timeout` for one. Each
        notification makes one token, so N idle consumers are not all woken by one row."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._tokens[channel] <= 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(remaining)
            self._tokens[channel] -= 1
            return True

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            connection = None
            try:
                connection = self._connect()
                connection.autocommit = True
                cursor = connection.cursor()
                for channel in self._channels:
                    cursor.execute(f'LISTEN "{channel}"')
                self._ready.set()
                # Wake every waiter once: anything may have happened while we were away.
                self._wake_all()
                backoff = 0.2
                sock = getattr(connection, "_usock", None)
                while not self._stop.is_set():
                    if sock is not None:
                        select.select([sock], [], [], POLL_SECONDS)
                    else:
                        time.sleep(POLL_SECONDS / 10)
                    cursor.execute("SELECT 1")
                    received = []
                    while connection.notifications:
                        _, channel, payload = connection.notifications.popleft()
                        received.append((channel, payload))
                    if received:
                        self._deliver(received)
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("notification listener lost its connection: %s", exc)
                    self._ready.clear()
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()

    def _wake_all(self) -> None:
        with self._cond:
            for key in list(self._counts):
                self._counts[key] += 1
            for channel in self._channels:
                self._counts[(channel, None)] += 1
                self._tokens[channel] += 1
            self._cond.notify_all()

    def _deliver(self, received: list[tuple[str, str | None]]) -> None:
        with self._cond:
            for channel, payload in received:
                self._counts[(channel, None)] += 1
                self._tokens[channel] = min(self._tokens[channel] + 1, 10_000)
                if payload is not None:
                    self._counts[(channel, payload)] += 1
            self._cond.notify_all()
