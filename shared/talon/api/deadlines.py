"""One timer thread for many deadlines (a thread per request body would cost more than the
reads it guards). Callbacks run on that thread, so they must be quick and must not raise."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("talon.gateway")


# A cancelled timer stays in the heap until it comes due or a compaction drops it (the thread
# is not woken for each request); compacted when this many are in it, at most every so many.
COMPACT_AT = 4096
COMPACT_EVERY = 1024


def _nothing() -> None:
    pass


class Timer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        # What the callback holds (a request's body reader, its socket) is freed now, not
        # when the timer leaves the heap.
        self._callback = _nothing

    def fire(self) -> None:
        if not self.cancelled:
            self._callback()


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        """Timers held, cancelled ones included until they are dropped."""
        with self._wake:
            return len(self._heap)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` at `when` (time.monotonic()) unless the timer is cancelled first."""
        timer = Timer(callback)
        with self._wake:
            order = next(self._order)
            if len(self._heap) >= COMPACT_AT and order % COMPACT_EVERY == 0:
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (when, order, timer))
            # Started on first use, in the process that serves: gunicorn builds the app
            # before it forks its workers, and a thread does not survive a fork.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="talon-deadlines",
                                                daemon=True)  # fmt: skip
                self._thread.start()
            if self._heap[0][2] is timer:
                # Only a new earliest deadline changes the thread's wait: waking it for every
                # request body (whose deadlines come in order) cost a thread switch each.
                self._wake.notify()
        return timer

    def _run(self) -> None:
        while True:
            with self._wake:
                due = self._next_due()
            try:
                due.fire()
            except Exception:  # one failed callback must not stop every later deadline
                log.exception("deadline callback failed")

    def _next_due(self) -> Timer:
        while True:
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            if self._heap:
                wait = self._heap[0][0] - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)[2]
                self._wake.wait(wait)
            else:
                self._wake.wait()
