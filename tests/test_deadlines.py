"""The gateway's one timer thread for request-body deadlines (`api/deadlines.py`)."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable

import pytest

from talon.api import deadlines as deadlines_module
from talon.api.deadlines import Deadlines


class Recorder:
    """Callbacks that note when they ran; `done` is set by the one marked last."""

    def __init__(self) -> None:
        self.fired: list[tuple[str, float]] = []
        self.done = threading.Event()

    def at(self, name: str, *, last: bool = False) -> Callable[[], None]:
        def callback() -> None:
            self.fired.append((name, time.monotonic()))
            if last:
                self.done.set()

        return callback

    def names(self) -> list[str]:
        return [name for name, _ in self.fired]


def test_timers_fire_in_deadline_order_whatever_order_they_were_set() -> None:
    deadlines, record = Deadlines(), Recorder()
    start = time.monotonic()
    deadlines.call_at(start + 0.6, record.at("late", last=True))
    time.sleep(0.05)  # the thread now waits for "late"
    deadlines.call_at(start + 0.4, record.at("middle"))
    # Earlier than the one the thread is waiting for: it must wake up for it.
    deadlines.call_at(start + 0.1, record.at("early"))
    assert record.done.wait(5)
    assert record.names() == ["early", "middle", "late"]
    early, middle, late = (when - start for _, when in record.fired)
    # Not before its time, and long before the deadline the thread was waiting for (0.6 s).
    assert 0.1 <= early < 0.45, early
    assert middle >= 0.4 and late >= 0.6


def test_a_later_timer_fires_on_time_behind_a_cancelled_one() -> None:
    """A timer set behind the earliest one does not wake the thread; it still fires on time,
    and a cancelled timer never fires."""
    deadlines, record = Deadlines(), Recorder()
    start = time.monotonic()
    cancelled = deadlines.call_at(start + 0.2, record.at("cancelled"))
    deadlines.call_at(start + 0.3, record.at("kept", last=True))
    cancelled.cancel()
    assert record.done.wait(5)
    time.sleep(0.1)
    assert record.names() == ["kept"]
    assert 0.3 <= record.fired[0][1] - start < 1.0


def test_a_timer_set_while_the_thread_idles_fires() -> None:
    deadlines, record = Deadlines(), Recorder()
    deadlines.call_at(time.monotonic() + 0.05, record.at("first", last=True))
    assert record.done.wait(5)
    time.sleep(0.1)  # the thread now waits with nothing to wait for
    record.done.clear()
    again = time.monotonic()
    deadlines.call_at(again + 0.05, record.at("second", last=True))
    assert record.done.wait(5)
    assert record.names() == ["first", "second"]
    assert record.fired[1][1] - again < 1.0  # not the thread's idle wait


def test_cancelled_timers_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests' timers are cancelled long before they are due, and the thread is not woken
    for them: a compaction keeps the heap to about the timers still pending, and a cancelled
    timer lets go of its callback (and what that holds: a request's body reader) at once."""
    monkeypatch.setattr(deadlines_module, "COMPACT_AT", 100)
    monkeypatch.setattr(deadlines_module, "COMPACT_EVERY", 10)
    deadlines, record = Deadlines(), Recorder()
    later = time.monotonic() + 3600
    deadlines.call_at(later, record.at("pending"))
    for _ in range(1000):
        deadlines.call_at(later, record.at("request")).cancel()
    assert len(deadlines) < 120

    class BodyReader:
        def expire(self) -> None:
            record.fired.append(("expired", time.monotonic()))

    reader = BodyReader()
    gone = weakref.ref(reader)
    deadlines.call_at(later, reader.expire).cancel()
    del reader
    gc.collect()
    assert gone() is None
    assert record.names() == []
