"""Crash tests: a real `talon worker` process is SIGKILLed mid-turn, again and again.
Afterwards every turn completed exactly once and no message is lost or doubled."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import samples
from conftest import ROOT, Api, read_stream
from test_models import policy

pytestmark = pytest.mark.slow
LEASE = 1.5


class WorkerProcess:
    def __init__(self, database_url: str, max_attempts: int = 20) -> None:
        # The kill tests are about loss and duplication: a turn must not run out of attempts
        # because the kills happened to land on it (that limit has its own test).
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
        env["TALON_CONTROL_PLANE_DATABASE_URL"] = database_url
        env["TALON_LOG_LEVEL"] = "WARNING"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "talon.cli.main", "worker", "--concurrency", "3",
             "--lease-seconds", str(LEASE), "--visibility-seconds", str(LEASE + 0.5),
             "--max-attempts", str(max_attempts)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=60)
        return err.decode()


def _setup(api: Api, model_server: Any, sessions: int) -> None:
    template = samples.template("acme")
    template["definition"]["modelPolicy"] = policy(model_server.url, "primary")
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme"), template,
                                                 samples.agent("acme")]})  # fmt: skip
    for i in range(sessions):
        api.ok("POST", "/v1/ns/acme/agents/bot/sessions", 201, json={"id": f"s{i}"})


def _open_turns(api: Api, sessions: int) -> int:
    total = 0
    for i in range(sessions):
        view = api.ok("GET", f"/v1/ns/acme/agents/bot/sessions/s{i}")
        total += (view["activeTurn"] is not None) + view["queuedTurns"]
    return total


def test_kill_during_a_model_call_resumes_without_loss(
    api: Api, model_server, database_url: str
) -> None:
    _setup(api, model_server, 1)
    model_server.add({"hang": 30, "content": "never delivered"}, {"content": "answered"})
    api.ok("POST", "/v1/ns/acme/agents/bot/sessions/s0/message", 202, json={"content": "hi"})
    first = WorkerProcess(database_url)
    deadline = time.monotonic() + 30
    while not model_server.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model_server.requests, "the worker never called the model"
    first.kill()
    second = WorkerProcess(database_url)
    try:
        deadline = time.monotonic() + 30
        while _open_turns(api, 1) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        second.stop()
    messages = api.ok("GET", "/v1/ns/acme/agents/bot/sessions/s0/messages")["items"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "hi"),
                                                            ("assistant", "answered")]  # fmt: skip
    turn = api.ok("GET", f"/v1/ns/acme/agents/bot/sessions/s0/turns/{messages[0]['turnId']}")
    assert turn["state"] == "completed" and turn["attempts"] == 2


def test_a_turn_that_keeps_killing_its_worker_fails_and_the_session_moves_on(
    api: Api, model_server, database_url: str
) -> None:
    """A poison turn: every worker that runs it dies during its model call. After
    --max-attempts starts it is failed (with its reason in the stream) and the next turn runs."""
    _setup(api, model_server, 1)
    model_server.add(*[{"hang": 30, "content": "never"}] * 2, {"content": "next one"})
    base = "/v1/ns/acme/agents/bot/sessions/s0"
    poison = api.ok("POST", f"{base}/message", 202, json={"content": "poison"})
    api.ok("POST", f"{base}/message", 202, json={"content": "fine"})
    for attempt in range(2):
        worker = WorkerProcess(database_url, max_attempts=2)
        deadline = time.monotonic() + 30
        while len(model_server.requests) <= attempt and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(model_server.requests) == attempt + 1, "the worker never called the model"
        worker.kill()
    worker = WorkerProcess(database_url, max_attempts=2)
    try:
        deadline = time.monotonic() + 30
        while _open_turns(api, 1) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        errors = worker.stop()
    assert "Traceback" not in errors, errors
    failed = api.ok("GET", f"{base}/turns/{poison['turnId']}")
    assert failed["state"] == "failed" and failed["attempts"] == 2
    assert failed["error"]["code"] == "too_many_attempts"
    messages = api.ok("GET", f"{base}/messages")["items"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "poison"), ("user", "fine"), ("assistant", "next one")
    ]  # fmt: skip
    events = read_stream(api, f"{base}/stream", last_event_id=0, params={"untilTurnEnd": "true"})
    failures = [e for e in events if e["type"] == "turn.failed"]
    assert [(e["turnId"], e["data"]["code"]) for e in failures] == [
        (poison["turnId"], "too_many_attempts")
    ]


def test_repeated_kills_leave_every_turn_done_exactly_once(
    api: Api, model_server, database_url: str
) -> None:
    sessions, per_session = 4, 3
    _setup(api, model_server, sessions)
    # Every model call takes a little while, so kills land inside calls as well as between.
    model_server.add(*[{"hang": 0.15, "content": f"answer {i}"} for i in range(200)])
    for round_ in range(per_session):
        for i in range(sessions):
            api.ok("POST", f"/v1/ns/acme/agents/bot/sessions/s{i}/message", 202,
                   json={"content": f"s{i} message {round_}"})  # fmt: skip
    kills = 0
    worker = WorkerProcess(database_url)
    deadline = time.monotonic() + 120
    delays = itertools.cycle([0.0, 0.05, 0.1, 0.17, 0.2, 0.3])  # inside and between steps
    try:
        while time.monotonic() < deadline and _open_turns(api, sessions):
            if kills >= 6:
                time.sleep(0.2)
                continue
            # Kill only once this worker is busy: after it sent a model request.
            seen = len(model_server.requests)
            while len(model_server.requests) == seen and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(next(delays))
            worker.kill()
            kills += 1
            worker = WorkerProcess(database_url)
    finally:
        errors = worker.stop()
    assert kills == 6
    assert _open_turns(api, sessions) == 0, "turns left open"
    assert "Traceback" not in errors, errors
    resumed = 0
    for i in range(sessions):
        messages = api.ok("GET", f"/v1/ns/acme/agents/bot/sessions/s{i}/messages")["items"]
        users = [m["content"] for m in messages if m["role"] == "user"]
        assert users == [f"s{i} message {r}" for r in range(per_session)]
        assistants = [m for m in messages if m["role"] == "assistant"]
        assert len(assistants) == per_session  # one answer per turn: none lost, none doubled
        turns = {m["turnId"] for m in assistants}
        assert len(turns) == per_session
        for turn_id in turns:
            turn = api.ok("GET", f"/v1/ns/acme/agents/bot/sessions/s{i}/turns/{turn_id}")
            assert turn["state"] == "completed"
            resumed += turn["attempts"] > 1
            assert [s["name"] for s in turn["steps"]] == [
                "load-knowledge", "call-model", "write-next-message"
            ]  # fmt: skip
    assert resumed >= 1, "no kill landed inside a turn; the test proved nothing"


def test_kills_around_tool_calls_never_run_a_call_twice(
    api: Api, model_server, database_url: str, tmp_path
) -> None:
    sessions = 3
    _setup(api, model_server, sessions)
    tool_call = {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 14},
                                 "nonce": True}]}  # fmt: skip
    answer = {"content": "Globex renews soon."}
    model_server.add(*[tool_call, answer] * 60)
    for i in range(sessions):
        for round_ in range(3):
            api.ok("POST", f"/v1/ns/acme/agents/bot/sessions/s{i}/message", 202,
                   json={"content": f"s{i} renewals {round_}"})  # fmt: skip
    calls_file = tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "tool_worker.py"), database_url,
             str(calls_file)],
            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT / "tests")},
            stderr=subprocess.PIPE,
        )  # fmt: skip

    def calls() -> list[str]:
        if not calls_file.exists():
            return []
        return [json.loads(line)["nonce"] for line in calls_file.read_text().splitlines()]

    worker = spawn()
    kills = 0
    deadline = time.monotonic() + 120
    delays = itertools.cycle([0.0, 0.05, 0.12, 0.3])
    try:
        while time.monotonic() < deadline and _open_turns(api, sessions):
            if kills >= 5:
                time.sleep(0.2)
                continue
            seen = len(calls())  # kill once a tool call has begun: during it or just after
            while len(calls()) == seen and _open_turns(api, sessions):
                time.sleep(0.01)
            time.sleep(next(delays))
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            kills += 1
            worker = spawn()
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=60)
    assert kills >= 3
    assert _open_turns(api, sessions) == 0
    assert b"Traceback" not in errors, errors.decode()
    nonces = calls()
    assert len(nonces) == len(set(nonces)), "a tool call ran twice"
    interrupted = 0
    for i in range(sessions):
        messages = api.ok("GET", f"/v1/ns/acme/agents/bot/sessions/s{i}/messages")["items"]
        # Every assistant tool call is answered by exactly one tool message, in order.
        for position, message in enumerate(messages):
            for call in message.get("toolCalls") or []:
                answers = [m for m in messages if m.get("toolCallId") == call["id"]
                           and m["turnId"] == message["turnId"]]  # fmt: skip
                assert len(answers) == 1
                assert messages.index(answers[0]) > position
                interrupted += answers[0]["content"].startswith("error: the worker")
        users = [m["content"] for m in messages if m["role"] == "user"]
        assert users == [f"s{i} renewals {r}" for r in range(3)]
        finals = [m for m in messages if m["role"] == "assistant" and not m.get("toolCalls")]
        assert len(finals) == 3  # one final answer per turn
    assert interrupted >= 1, "no kill landed inside a tool call; the test proved nothing"
