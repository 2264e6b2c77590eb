"""Open SSE streams never starve the gateway (issue 19), against the gateway served two
ways with THREADS=64:

- with functions-framework's CLI (what Cloud Run functions run), where each open stream
  holds a thread, and the default caps: 64 threads leave 32 to token holders, streams may
  take 24 of them (gateway.maxOpenStreams) and 6 per token (gateway.maxStreamsPerToken);
- as `talon dev` serves it (`python -m talon.serve`), whose stream hub holds open streams
  without a thread each, with caps set to 120 and 30: more streams than threads are open at
  once and the gateway still serves everything else.

Before the caps, 64 quiet streams held all 64 threads and the gateway answered nothing at
all (not /healthz, not a POST, not another stream) until one ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN_TOKEN, ROOT, TEMPLATE_DB, TEST_CONFIG, Cluster
from talon.cli.dev import GATEWAY_ENV, gateway_command
from talon.cli.manifest_files import read_documents
from talon.store.local_postgres import free_port

# (open streams, per token) by server: functions-framework's defaults, (64 - 64 // 2) * 3 // 4
# and a quarter of that; talon.serve's as configured below.
CAPS = {"functions_framework": (24, 6), "talon.serve": (120, 30)}
PROMPT = 2.0  # seconds: "promptly", with room for a loaded 2-core machine
BASE = "/v1/ns/acme/agents/customer-support/sessions"


class _Gateway:
    def __init__(self, server: str, database_url: str, log: Path) -> None:
        self.port = free_port()
        self.server = server
        self.open_streams, self.per_token = CAPS[server]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
        # functions-framework: the defaults, derived from THREADS (the tests' configuration
        # lifts them); talon.serve: below its defaults (10,000), to reach them in a test.
        caps = (0, 0) if server == "functions_framework" else CAPS[server]
        env |= GATEWAY_ENV | {"TALON_GATEWAY_MAX_OPEN_STREAMS": str(caps[0]),
                              "TALON_GATEWAY_MAX_STREAMS_PER_TOKEN": str(caps[1])}  # fmt: skip
        env |= {"TALON_CONTROL_PLANE_DATABASE_URL": database_url,
                "TALON_ADMIN_TOKEN": ADMIN_TOKEN, "TALON_CONFIG": str(TEST_CONFIG)}  # fmt: skip
        command = gateway_command("127.0.0.1", self.port)
        command[2] = server  # python -m <server> --target gateway ...
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env,
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=PROMPT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.http.close()
        try:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=40)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait()


@pytest.fixture(scope="module", params=sorted(CAPS))
def gateway(
    request: pytest.FixtureRequest,
    cluster: Cluster,
    template_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[_Gateway]:
    server = request.param
    name = f"talon_streams_{server.replace('.', '_')}_{os.getpid()}"
    url = cluster.create(name, template=TEMPLATE_DB)
    served = _Gateway(server, url, tmp_path_factory.mktemp("streams") / "gateway.log")
    try:
        documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
        reply = served.http.post("/v1/apply", json={"items": documents}, timeout=30)
        assert reply.status_code == 200, reply.text
        yield served
    finally:
        served.stop()


def _token(gateway: _Gateway, role: str = "read") -> str:
    body = {"name": f"t-{time.monotonic_ns()}", "role": role, "namespaces": ["acme"]}
    reply = gateway.http.post("/v1/tokens", json=body)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["token"])


def _session(gateway: _Gateway) -> str:
    reply = gateway.http.post(BASE, json={})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


class _Stream:
    """A stream opened over a raw socket: its status once the head (and, for a 200, the
    first `retry:` line) arrived."""

    def __init__(
        self, port: int, token: str, session: str, query: str = "heartbeat=1",
        post: str | None = None,
    ) -> None:  # fmt: skip
        """`post`: a message posted for its events, instead of `GET .../stream`."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=PROMPT)
        if post is None:
            head = (f"GET {BASE}/{session}/stream?{query} HTTP/1.1\r\nHost: t\r\n"
                    f"Authorization: Bearer {token}\r\n\r\n")  # fmt: skip
        else:
            body = json.dumps({"content": post})
            head = (f"POST {BASE}/{session}/message?{query} HTTP/1.1\r\nHost: t\r\n"
                    f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n{body}")  # fmt: skip
        self.sock.sendall(head.encode())
        self.received = b""
        while b"\r\n\r\n" not in self.received:
            self._read()
        self.status = int(self.received.split(b" ", 2)[1])
        if self.status in (200, 202):
            while b"retry:" not in self.received:
                self._read()

    def _read(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.received += chunk
        return chunk

    def headers(self) -> str:
        return self.received.split(b"\r\n\r\n", 1)[0].decode().lower()

    def body(self) -> dict[str, object]:
        head, _, body = self.received.partition(b"\r\n\r\n")
        length = int(next(line.split(":")[1] for line in head.decode().lower().split("\r\n")
                          if line.startswith("content-length:")))  # fmt: skip
        while len(body) < length:
            body += self._read()
        return dict(json.loads(body[:length]))

    def ended(self, within: float) -> bool:
        """Whether the server ended the stream (its last chunk, or the connection closed)
        within `within` seconds."""
        deadline = time.monotonic() + within
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            if self.received.endswith(b"\r\n0\r\n\r\n"):
                return True
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return True
            self.received += chunk
        return False

    def close(self) -> None:
        self.sock.close()


def _open(gateway: _Gateway, tokens: list[str], sessions: list[str], count: int) -> list[_Stream]:
    return [_Stream(gateway.port, tokens[i % len(tokens)], sessions[i % len(sessions)])
            for i in range(count)]  # fmt: skip


def _open_all(
    gateway: _Gateway, tokens: list[str], sessions: list[str], count: int
) -> list[_Stream]:
    """`count` streams, all served: retried for a few seconds while an earlier test's closed
    streams still hold their slots (the server notices a client gone at its next keep-alive)."""
    deadline = time.monotonic() + 10
    while True:
        streams = _open(gateway, tokens, sessions, count)
        statuses = [s.status for s in streams]
        if statuses == [200] * count:
            return streams
        for stream in streams:
            stream.close()
        assert time.monotonic() < deadline, str(statuses)
        time.sleep(1)


def test_open_streams_leave_the_gateway_serving(gateway: _Gateway) -> None:
    readers = [_token(gateway) for _ in range(12)]
    writer = _token(gateway, "write")
    sessions = [_session(gateway) for _ in range(6)]
    streams: list[_Stream] = []
    try:
        # As a dashboard following many sessions would: more streams than the caps allow,
        # and (talon.serve) than there are threads.
        asked = max(70, gateway.open_streams + 10)  # 64 threads
        streams = _open(gateway, readers, sessions, asked)
        statuses = [s.status for s in streams]
        assert statuses.count(200) == gateway.open_streams, statuses
        assert statuses.count(503) == asked - gateway.open_streams, statuses
        refused = next(s for s in streams if s.status == 503)
        assert "retry-after: 5" in refused.headers()
        error = refused.body()["error"]
        assert isinstance(error, dict) and error["code"] == "busy"
        assert "maxOpenStreams" in str(error["message"])

        # With every stream slot taken, the gateway still answers everything else at once.
        started = time.monotonic()
        assert gateway.http.get("/healthz").status_code == 200
        other = _session(gateway)
        posted = gateway.http.post(
            f"{BASE}/{other}/message", json={"content": "hello"},
            headers={"Authorization": f"Bearer {writer}"},
        )  # fmt: skip
        assert posted.status_code == 202, posted.text
        assert gateway.http.get(f"{BASE}/{other}/messages").status_code == 200
        assert time.monotonic() - started < 3 * PROMPT
        another = _Stream(gateway.port, _token(gateway), other)
        assert another.status == 503
        another.close()

        # A client that goes away gives its slot back (at its next keep-alive), and another
        # stream is then served.
        for stream in streams:
            stream.close()
        streams = []
        deadline = time.monotonic() + 10
        while True:
            reopened = _Stream(gateway.port, _token(gateway), other)
            streams.append(reopened)
            if reopened.status == 200:
                break
            assert time.monotonic() < deadline, "slots were not given back"
            time.sleep(0.5)
    finally:
        for stream in streams:
            stream.close()


def test_one_token_cannot_take_every_slot(gateway: _Gateway) -> None:
    reader = _token(gateway)
    session = _session(gateway)
    streams = _open_all(gateway, [reader], [session], gateway.per_token)
    streams.append(_Stream(gateway.port, reader, session))
    try:
        assert [s.status for s in streams] == [200] * gateway.per_token + [429]
        assert "retry-after: 5" in streams[-1].headers()
        error = streams[-1].body()["error"]
        assert isinstance(error, dict) and error["code"] == "too_many_streams"
        assert "maxStreamsPerToken" in str(error["message"])
        # Another reader is still served.
        other = _Stream(gateway.port, _token(gateway), session)
        streams.append(other)
        assert other.status == 200
    finally:
        for stream in streams:
            stream.close()


def test_slots_come_back_when_streams_end_by_themselves(gateway: _Gateway) -> None:
    reader = _token(gateway)
    session = _session(gateway)
    for _ in range(2):  # the second round finds the first round's slots free again
        streams = [_Stream(gateway.port, reader, session, "maxSeconds=1")
                   for _ in range(gateway.per_token)]  # fmt: skip
        try:
            # (all served: this token's own slots, and more than enough free others)
            assert [s.status for s in streams] == [200] * gateway.per_token
            assert all(s.ended(within=10) for s in streams)
            time.sleep(0.5)  # the server closes each response just after its last chunk
        finally:
            for stream in streams:
                stream.close()
    # A refused stream holds nothing, and neither does one the gateway refuses itself.
    missing = _Stream(gateway.port, reader, "ses_missing")
    assert missing.status in (400, 404)
    missing.close()
    streams = _open(gateway, [reader], [session], gateway.per_token)
    try:
        assert [s.status for s in streams] == [200] * gateway.per_token
    finally:
        for stream in streams:
            stream.close()
    _assert_every_slot_free(gateway, session)


def test_a_stream_ended_by_revoking_its_token_gives_its_slot_back(gateway: _Gateway) -> None:
    reply = gateway.http.post("/v1/tokens", json={"name": "revoked", "role": "read",
                                                  "namespaces": ["acme"]})  # fmt: skip
    reader, token_id = reply.json()["token"], reply.json()["id"]
    session = _session(gateway)
    streams = _open_all(gateway, [reader], [session], gateway.per_token)
    try:
        assert gateway.http.delete(f"/v1/tokens/{token_id}").status_code in (200, 204)
        assert all(s.ended(within=30) for s in streams)
        assert all(b"stream.end" in s.received for s in streams)
    finally:
        for stream in streams:
            stream.close()
    _assert_every_slot_free(gateway, session)


def test_a_message_posted_for_its_events_takes_a_slot_first(gateway: _Gateway) -> None:
    """A posted message answered with its events holds a stream slot like any stream, taken
    before anything is queued: refused, the message is not posted (its client retries), and
    a write token cannot hold more than its share of the gateway this way either."""
    writer = _token(gateway, "write")
    session = _session(gateway)
    # (They end by themselves, after the checks below: a slot a client drops comes back
    # only at the stream's next keep-alive.)
    deadline = time.monotonic() + 10
    while True:  # retried while an earlier test's dropped streams still hold their slots
        streams = [_Stream(gateway.port, writer, session, "maxSeconds=4", post=f"m{i}")
                   for i in range(gateway.per_token)]  # fmt: skip
        if [s.status for s in streams] == [202] * gateway.per_token:
            break
        for stream in streams:
            stream.close()
        assert time.monotonic() < deadline, [s.status for s in streams]
        time.sleep(1)
    try:
        refused = _Stream(gateway.port, writer, session, post="one too many")
        streams.append(refused)
        assert refused.status == 429
        assert "retry-after: 5" in refused.headers()
        error = refused.body()["error"]
        assert isinstance(error, dict) and error["code"] == "too_many_streams"
        messages = gateway.http.get(f"{BASE}/{session}/messages").json()["items"]
        assert "one too many" not in [m["content"] for m in messages]
        # Posted for JSON, it is no stream and takes no slot.
        posted = gateway.http.post(
            f"{BASE}/{session}/message", json={"content": "json"},
            headers={"Authorization": f"Bearer {writer}"},
        )  # fmt: skip
        assert posted.status_code == 202 and posted.json()["turnId"]
        assert all(s.ended(within=10) for s in streams[:-1])
        time.sleep(0.5)  # the server closes each response just after its last chunk
    finally:
        for stream in streams:
            stream.close()
    _assert_every_slot_free(gateway, session)


def _assert_every_slot_free(gateway: _Gateway, session: str) -> None:
    """All the slots can be taken (retried for a few seconds: a slot comes back
    when the server has closed the response)."""
    readers = [_token(gateway) for _ in range(gateway.open_streams // gateway.per_token)]
    for stream in _open_all(gateway, readers, [session], gateway.open_streams):
        stream.close()
