"""SSE streams handed over to talon.serve's stream hub, end to end against the gateway as
`talon dev` runs it: events, heartbeats, resumption and shutdown behave as under a
thread-per-stream server, and open streams hold no thread."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_stream_limits import BASE, _Gateway, _session, _Stream, _token

from conftest import ROOT, TEMPLATE_DB, Cluster
from talon.cli.manifest_files import read_documents


@pytest.fixture(scope="module")
def served(
    cluster: Cluster, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Gateway]:
    url = cluster.create(f"talon_handover_{os.getpid()}", template=TEMPLATE_DB)
    gateway = _Gateway("talon.serve", url, tmp_path_factory.mktemp("handover") / "gateway.log")
    try:
        _apply_examples(gateway)
        yield gateway
    finally:
        gateway.stop()


def _apply_examples(gateway: _Gateway) -> None:
    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    reply = gateway.http.post("/v1/apply", json={"items": documents}, timeout=30)
    assert reply.status_code == 200, reply.text


def _events(stream: _Stream) -> list[dict[str, object]]:
    """The events received so far (chunk framing removed: each chunk here is whole)."""
    body = stream.received.split(b"\r\n\r\n", 1)[1]
    found = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: "):
            found.append(json.loads(line[6:]))
    return found


def _read_until(stream: _Stream, marker: bytes, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    stream.sock.settimeout(0.5)
    while marker not in stream.received:
        assert time.monotonic() < deadline, stream.received[-400:]
        try:
            chunk = stream.sock.recv(65536)
        except TimeoutError:
            continue
        assert chunk, f"closed before {marker!r}: {stream.received[-400:]!r}"
        stream.received += chunk


def _worker_pid(gateway: _Gateway) -> int:
    children = Path(f"/proc/{gateway.process.pid}/task/{gateway.process.pid}/children")
    return int(children.read_text().split()[0])


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_handed_over_stream_gets_new_events_and_heartbeats(served: _Gateway) -> None:
    writer, session = _token(served, "write"), _session(served)
    stream = _Stream(served.port, _token(served), session, "heartbeat=1")
    try:
        assert b"transfer-encoding: chunked" in stream.received.lower()
        time.sleep(0.3)  # handed over by now: what follows comes from the hub
        posted = served.http.post(f"{BASE}/{session}/message", json={"content": "hi"},
                                  headers={"Authorization": f"Bearer {writer}"})  # fmt: skip
        assert posted.status_code == 202, posted.text
        _read_until(stream, b"event: turn.queued")
        types = [e["type"] for e in _events(stream)]
        assert types[:2] == ["message.created", "turn.queued"], types
        before = stream.received.count(b": keep-alive")
        _read_until(stream, b": keep-alive", within=5)
        time.sleep(2.5)
        stream.sock.settimeout(0.5)
        try:
            while chunk := stream.sock.recv(65536):
                stream.received += chunk
        except TimeoutError:
            pass
        assert stream.received.count(b": keep-alive") >= before + 2
    finally:
        stream.close()


def test_a_stream_ended_by_the_hub_resumes_without_a_gap(served: _Gateway) -> None:
    writer, session = _token(served, "write"), _session(served)
    reader = _token(served)
    headers = {"Authorization": f"Bearer {writer}"}
    first = _Stream(served.port, reader, session, "maxSeconds=2&heartbeat=1")
    for i in range(3):
        reply = served.http.post(f"{BASE}/{session}/message", json={"content": f"m{i}"},
                                 headers=headers)  # fmt: skip
        assert reply.status_code == 202, reply.text
    assert first.ended(within=10)
    assert first.received.endswith(b"0\r\n\r\n")  # a clean end of the chunked body
    seen = _events(first)
    first.close()
    last = seen[-1]["id"]
    for i in range(3, 5):
        served.http.post(f"{BASE}/{session}/message", json={"content": f"m{i}"}, headers=headers)
    second = _Stream(served.port, reader, session, f"lastEventId={last}&maxSeconds=1")
    assert second.ended(within=10)
    ids = [int(str(e["id"])) for e in seen + _events(second)]
    assert len(ids) == 10  # 5 messages, 5 queued turns (no worker runs them)
    assert ids == sorted(set(ids))  # every event once, in order
    second.close()


def test_open_streams_hold_no_thread(served: _Gateway) -> None:
    worker = _worker_pid(served)
    readers = [_token(served) for _ in range(8)]
    session = _session(served)
    baseline = _threads(worker)
    streams = [_Stream(served.port, readers[i % 8], session) for i in range(100)]
    try:
        assert [s.status for s in streams] == [200] * 100
        time.sleep(0.5)
        # gunicorn's THREADS (64) at most, the hub's loop and pool, the listener: not 100.
        assert _threads(worker) <= max(baseline, 64) + 10
        assert served.http.get("/healthz").status_code == 200
    finally:
        for stream in streams:
            stream.close()


def test_stopping_the_gateway_ends_its_streams_cleanly(
    cluster: Cluster, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = cluster.create(f"talon_handover_stop_{os.getpid()}", template=TEMPLATE_DB)
    gateway = _Gateway("talon.serve", url, tmp_path_factory.mktemp("stop") / "gateway.log")
    try:
        _apply_examples(gateway)
        session = _session(gateway)
        streams = [_Stream(gateway.port, _token(gateway), session) for _ in range(5)]
        time.sleep(0.3)
        os.kill(gateway.process.pid, signal.SIGTERM)
        for stream in streams:
            assert stream.ended(within=20)
            assert stream.received.endswith(b"0\r\n\r\n"), stream.received[-100:]
            stream.close()
        gateway.process.wait(timeout=30)
    finally:
        gateway.stop()


def test_a_stream_asked_for_with_a_body_stays_open(served: _Gateway) -> None:
    """Its body is left unread and the connection's read side shut: that end of input is
    not the client going away."""
    session = _session(served)
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    try:
        sock.sendall((f"GET {BASE}/{session}/stream?heartbeat=1 HTTP/1.1\r\nHost: t\r\n"
                      f"Authorization: Bearer {_token(served)}\r\nContent-Length: 5\r\n\r\n"
                      "hello").encode())  # fmt: skip
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b": keep-alive") < 2:
            assert time.monotonic() < deadline, received
            chunk = sock.recv(65536)
            assert chunk, f"closed: {received!r}"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in received.lower()
    finally:
        sock.close()


def test_a_long_history_is_sent_whole_in_order(served: _Gateway) -> None:
    """More events than one advance formats (api/sse.py ADVANCE_ITEMS): sent in pieces,
    every one once, in order."""
    writer, session = _token(served, "write"), _session(served)
    headers = {"Authorization": f"Bearer {writer}"}
    for i in range(70):
        reply = served.http.post(f"{BASE}/{session}/message", json={"content": f"m{i}"},
                                 headers=headers)  # fmt: skip
        assert reply.status_code == 202, reply.text
    stream = _Stream(served.port, _token(served), session, "lastEventId=0&maxSeconds=2")
    try:
        assert stream.ended(within=15)
        ids = [int(str(e["id"])) for e in _events(stream)]
        assert len(ids) == 140  # 70 messages, 70 queued turns
        assert ids == sorted(set(ids))
    finally:
        stream.close()
