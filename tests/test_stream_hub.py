"""talon.serve's stream hub on real sockets: what it sends, when it asks a stream for more,
and how every way a stream ends releases it (the gateway's streams through it are tested
end to end in test_stream_limits.py and test_sse_handover.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from talon.actions.stream_slots import FILE_MARGIN, HUB_STREAMS, hub_stream_caps
from talon.serve.stream_hub import LOW_WATER, MAX_RECEIVED, StreamHub

pytestmark = pytest.mark.fast


class _Program:
    """A stream that sends `pieces` one per advance, then ends (or waits forever)."""

    def __init__(self, pieces: list[bytes], wait: float = 30.0, end: bool = True) -> None:
        self.pieces = list(pieces)
        self.wait = wait
        self.end = end
        self.advances = 0
        self.running = threading.Event()
        self.overlapped = False
        self.finished = threading.Event()
        self.wake: Callable[[], None] | None = None
        self.delay = 0.0
        self.fail = False

    def advance(self) -> tuple[bytes, float | None]:
        if self.running.is_set() or self.finished.is_set():
            self.overlapped = True
        self.running.set()
        try:
            self.advances += 1
            time.sleep(self.delay)
            if self.fail:
                raise RuntimeError("boom")
            if self.pieces:
                return self.pieces.pop(0), self.wait
            return b"", None if self.end else self.wait
        finally:
            self.running.clear()

    def on_ready(self, wake: Callable[[], None]) -> None:
        self.wake = wake

    def finish(self) -> None:
        if self.running.is_set() or self.finished.is_set():
            self.overlapped = True
        self.finished.set()


@pytest.fixture
def hub() -> Iterator[StreamHub]:
    served = StreamHub(workers=2)
    yield served
    served.stop()


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    return ours, theirs


def _read_until(sock: socket.socket, marker: bytes, within: float = 5.0) -> bytes:
    data = b""
    deadline = time.monotonic() + within
    while marker not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _closed(sock: socket.socket, within: float = 5.0) -> bytes:
    """Everything the hub still sends until it closes its end."""
    data = b""
    sock.settimeout(within)
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_what_a_stream_produces_is_sent_as_chunks_and_ended(hub: StreamHub) -> None:
    client, server = _pair()
    program = _Program([b"one", b"two"], wait=0.05)
    hub.adopt(server, program, chunked=True)
    assert _closed(client) == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
    assert program.finished.wait(5)
    assert not program.overlapped


def test_an_unchunked_stream_ends_by_closing(hub: StreamHub) -> None:
    client, server = _pair()
    hub.adopt(server, _Program([b"one"], wait=0.05), chunked=False)
    assert _closed(client) == b"one"


def test_a_wake_asks_at_once_and_the_wait_is_kept_otherwise(hub: StreamHub) -> None:
    client, server = _pair()
    program = _Program([b"a", b"b", b"c"], wait=30.0, end=False)
    hub.adopt(server, program, chunked=False)
    assert _read_until(client, b"a") == b"a"
    time.sleep(0.3)
    assert program.advances == 1  # asked again only in 30 s
    assert program.wake is not None
    started = time.monotonic()
    program.wake()
    assert _read_until(client, b"b") == b"b"
    assert time.monotonic() - started < 2


def test_the_time_a_stream_asked_for_brings_it_back(hub: StreamHub) -> None:
    client, server = _pair()
    hub.adopt(server, _Program([b"a", b"b"], wait=0.2, end=False), chunked=False)
    started = time.monotonic()
    assert _read_until(client, b"ab") == b"ab"
    assert 0.15 < time.monotonic() - started < 3


def test_a_client_that_goes_away_releases_its_stream(hub: StreamHub) -> None:
    client, server = _pair()
    program = _Program([b"a"], end=False)
    hub.adopt(server, program, chunked=True)
    _read_until(client, b"a")
    client.close()
    assert program.finished.wait(5)
    deadline = time.monotonic() + 5
    while hub.open_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hub.open_streams == 0


def test_a_stream_is_never_finished_while_it_advances(hub: StreamHub) -> None:
    client, server = _pair()
    program = _Program([b"a", b"b"], wait=0.01, end=False)
    hub.adopt(server, program, chunked=True)
    _read_until(client, b"a")
    program.delay = 0.5
    assert program.running.wait(5)  # its next advance is under way...
    client.close()  # ...when its client goes
    assert program.finished.wait(5)
    assert not program.overlapped


def test_a_client_that_does_not_read_is_not_fed_and_is_cut_off_others_are_served() -> None:
    hub = StreamHub(workers=2, stall_seconds=1.0)
    try:
        stuck_client, stuck_server = _pair()
        stuck_server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stuck_client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood = _Program([b"x" * 65536] * 1000, wait=0.0, end=False)
        hub.adopt(stuck_server, flood, chunked=True)
        client, server = _pair()
        other = _Program([b"a", b"b", b"c"], wait=0.05, end=True)
        hub.adopt(server, other, chunked=True)
        assert _closed(client).endswith(b"0\r\n\r\n")  # served while the other is stuck
        time.sleep(0.5)
        # Backpressure: asked for more only while little waits for the client.
        assert flood.advances * 65536 < 4 * LOW_WATER + 1_000_000
        assert flood.finished.wait(10)  # cut off after taking nothing for a second
        assert flood.advances < 40
        received = _closed(stuck_client)
        assert not received.endswith(b"0\r\n\r\n")  # cut off: not a clean end
    finally:
        hub.stop()


def test_a_reader_gets_large_output_whole(hub: StreamHub) -> None:
    client, server = _pair()
    big = b"y" * (3 << 20)
    program = _Program([big, b"end"], wait=0.0)
    hub.adopt(server, program, chunked=False)
    received = _closed(client, within=10)
    assert received == big + b"end"


def test_a_client_that_sends_too_much_is_cut_off(hub: StreamHub) -> None:
    client, server = _pair()
    program = _Program([b"a"], end=False)
    hub.adopt(server, program, chunked=True)
    _read_until(client, b"a")
    client.sendall(b"z" * (MAX_RECEIVED + 4096))
    assert program.finished.wait(5)


def test_without_read_watching_a_half_closed_client_keeps_its_stream(hub: StreamHub) -> None:
    client, server = _pair()
    program = _Program([b"a", b"b"], wait=0.3, end=True)
    server.shutdown(socket.SHUT_RD)  # as a request whose body was left unread
    hub.adopt(server, program, chunked=True, watch_reads=False)
    client.shutdown(socket.SHUT_WR)
    assert _closed(client) == b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n"


def test_more_than_one_advance_s_worth_is_asked_for_at_once(hub: StreamHub) -> None:
    """A stream returning a wait of 0 (more is ready) is asked again at once."""
    client, server = _pair()
    program = _Program([b"a", b"b", b"c"], wait=0.0, end=True)
    hub.adopt(server, program, chunked=False)
    started = time.monotonic()
    assert _closed(client) == b"abc"
    assert time.monotonic() - started < 2


def test_a_failing_stream_is_closed_without_a_clean_end(hub: StreamHub) -> None:
    client, server = _pair()
    program = _Program([b"a"], wait=0.05, end=False)
    hub.adopt(server, program, chunked=True)
    _read_until(client, b"a")
    program.fail = True
    assert _closed(client) == b""
    assert program.finished.wait(5)


def test_stopping_ends_every_stream_cleanly() -> None:
    hub = StreamHub(workers=2)
    pairs = [_pair() for _ in range(3)]
    programs = [_Program([b"a"], end=False) for _ in pairs]
    for (_client, server), program in zip(pairs, programs, strict=True):
        hub.adopt(server, program, chunked=True)
    for client, _server in pairs:
        _read_until(client, b"a")
    hub.stop()
    for (client, _server), program in zip(pairs, programs, strict=True):
        assert _closed(client) == b"0\r\n\r\n"
        assert program.finished.is_set()
    # A stream handed over while it stops is ended at once.
    client, server = _pair()
    late = _Program([b"a"], end=False)
    hub.adopt(server, late, chunked=True)
    assert late.finished.wait(5)


@pytest.mark.parametrize("fails", [False, True], ids=["advance-returns", "advance-fails"])
def test_a_stream_advancing_as_the_hub_stops_still_ends_cleanly(fails: bool) -> None:
    """A stop that lands while a stream's advance runs on the pool (the gateway's SIGTERM as
    a stream reads its events; seen under load in test_sse_handover) ends that stream
    cleanly once the advance is back, whatever it returned: its client resumes. Before, the
    stop's clean end was forgotten and the client saw the connection drop mid-response."""
    hub = StreamHub(workers=2)
    client, server = _pair()
    program = _Program([b"a"], wait=0.01, end=False)
    hub.adopt(server, program, chunked=True)
    assert _read_until(client, b"a") == b"1\r\na\r\n"
    program.delay = 0.5
    program.fail = fails  # e.g. the database pool already closed by the shutdown
    assert program.running.wait(5)  # an advance is under way...
    hub.stop()  # ...when the hub is told to stop
    assert _closed(client) == b"0\r\n\r\n"
    assert program.finished.wait(5)
    assert not program.overlapped


def test_a_stream_whose_advance_waits_in_the_pool_as_the_hub_stops_ends_at_once() -> None:
    """A stop that finds a stream's advance still queued behind a slow one (every worker
    busy) calls it off and ends that stream cleanly at once; before, the pool's shutdown
    cancelled the advance and the stream was never ended or finished."""
    hub = StreamHub(workers=1)
    (slow_client, slow_server), (queued_client, queued_server) = _pair(), _pair()
    slow, queued = _Program([b"a", b"b"], end=False), _Program([b"a", b"b"], end=False)
    hub.adopt(slow_server, slow, chunked=True)
    hub.adopt(queued_server, queued, chunked=True)
    _read_until(slow_client, b"a")
    _read_until(queued_client, b"a")
    assert slow.wake is not None and queued.wake is not None
    slow.delay = 1.5
    slow.wake()
    assert slow.running.wait(5)  # the one worker is busy...
    queued.wake()  # ...so this advance waits in the pool's queue
    time.sleep(0.1)
    started = time.monotonic()
    hub.stop(timeout=0.3)
    assert _closed(queued_client, within=5) == b"0\r\n\r\n"
    assert time.monotonic() - started < 1.2  # not after the slow advance
    assert queued.finished.is_set() and queued.advances == 1 and not queued.overlapped
    assert _closed(slow_client, within=5) == b"0\r\n\r\n"  # once its advance is back
    assert slow.finished.wait(5) and not slow.overlapped


def test_a_stream_handed_over_as_the_hub_stops_still_ends_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop that lands while a stream is being handed over (the gateway's SIGTERM as a
    stream's head goes out) ends that stream cleanly too: the hub decides and queues in one
    step. Before, the stream was queued after the loop had ended, and its client saw the
    connection drop with no last chunk."""
    from talon.serve import stream_hub

    hub = StreamHub(workers=2)
    first_client, first_server = _pair()
    hub.adopt(first_server, _Program([b"a"], end=False), chunked=True)
    _read_until(first_client, b"a")  # the loop runs
    made = stream_hub._Stream

    def stopping_meanwhile(*args: object) -> object:
        stopper = threading.Thread(target=hub.stop)
        stopper.start()
        stopper.join(10)  # the loop has ended its one stream and stopped
        return made(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(stream_hub, "_Stream", stopping_meanwhile)
    client, server = _pair()
    late = _Program([b"a"], end=False)
    hub.adopt(server, late, chunked=True)
    assert _closed(client, within=5) == b"0\r\n\r\n"
    assert late.finished.is_set()
    assert _closed(first_client) == b"0\r\n\r\n"


def test_hub_caps_follow_the_settings_and_the_open_file_limit() -> None:
    assert hub_stream_caps(0, 0, 1 << 20) == (HUB_STREAMS, HUB_STREAMS // 4)
    assert hub_stream_caps(120, 30, 1 << 20) == (120, 30)
    assert hub_stream_caps(0, 0, FILE_MARGIN + 2000) == (2000, 500)  # each stream is a file
    assert hub_stream_caps(50_000, 0, FILE_MARGIN + 2000) == (2000, 500)
    assert hub_stream_caps(10, 50, 1 << 20) == (10, 10)  # never more per token than in all
    assert hub_stream_caps(0, 0, 100) == (1, 1)
