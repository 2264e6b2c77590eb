"""Takeover in seconds on Pub/Sub pull (gcloud emulator, real `talon worker` processes, every
timing at its default). A SIGKILLed pull worker's message stays with Pub/Sub until the ack
deadline it stopped extending runs out (10 s at least); an idle pull worker's orphan sweep
(runtime/orphans.py) takes the dead worker's turn over before that, the session's queued
turns run after it, the late message finds nothing to do, and no tool call runs twice."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_crash import _open_turns, _setup
from test_pubsub_pull import pull_env
from test_takeover import Process, _nonces, _running_owner, _scalar, _wait, live_workers

from conftest import ROOT, TEST_CONFIG, Api
from talon import entrypoints
from talon.broker.pubsub_topology import create_pull_topology, delete_pull_topology
from talon.config import load_settings
from talon.runtime.turns import INTERRUPTED

pytestmark = pytest.mark.slow
_ids = itertools.count()
# Pub/Sub's shortest ack deadline, and the subscription's (the default): a turn done sooner
# than this after the kill was not freed by the dead worker's message coming back.
ACK_DEADLINE = 10.0
SWEPT = "taking over session"  # what the sweeping worker logs (a warning)


@pytest.fixture
def pull_process_env(
    pubsub_emulator: str, gateway_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Fresh topics and pull subscriptions with the default ack deadline; the in-process
    gateway publishing to them; the worker processes' environment."""
    env = pull_env(f"t{next(_ids)}", pubsub_emulator, database_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    entrypoints.reset()
    settings = load_settings(TEST_CONFIG).control_plane.message_broker
    create_pull_topology(settings, minimum_backoff_seconds=1, maximum_backoff_seconds=2)
    base = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
    yield {**base, **env, "TALON_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT / "tests")}
    entrypoints.reset()
    delete_pull_topology(settings)


def talon_worker(env: dict[str, str]) -> Process:
    return Process([sys.executable, "-m", "talon.cli.main", "worker", "--concurrency", "2"], env)


def tool_worker(env: dict[str, str], database_url: str, calls: Path) -> Process:
    """tests/tool_worker.py on Pub/Sub with the default 30 s lease and a 4 s tool."""
    argv = [sys.executable, str(ROOT / "tests" / "tool_worker.py"), database_url, str(calls),
            "30", "4"]  # fmt: skip
    return Process(argv, env)


def test_a_killed_pull_workers_turn_is_swept_before_its_message_comes_back(
    api: Api, model_server: Any, database_url: str, pull_process_env: dict[str, str]
) -> None:
    _setup(api, model_server, 1)
    model_server.add({"hang": 60, "content": "never delivered"}, {"content": "answered"})
    first = talon_worker(pull_process_env)
    second = None
    try:
        _wait(lambda: live_workers(database_url) == 1, 60, "the first worker's lock")
        second = talon_worker(pull_process_env)  # idle: it has nothing to do yet
        _wait(lambda: live_workers(database_url) == 2, 60, "the second worker's lock")
        api.ok("POST", "/v1/ns/acme/agents/bot/sessions/s0/message", 202,
               json={"content": "hi"})  # fmt: skip
        _wait(lambda: model_server.requests, 30, "the model call")
        # The model call began: whichever worker received the message runs it.
        victim = _runner(database_url, first, second)
        victim.kill()
        took = _wait(lambda: _open_turns(api, 1) == 0, 60, "the takeover")
        print(f"turn done {took:.2f} s after the kill")
        time.sleep(ACK_DEADLINE + 2)  # the dead worker's message comes back: nothing to do
    finally:
        errors = first.stop() + (second.stop() if second is not None else "")
    assert "Traceback" not in errors, errors
    assert SWEPT in errors, errors  # the sweep took it, not the message's redelivery
    assert took < ACK_DEADLINE
    messages = api.ok("GET", "/v1/ns/acme/agents/bot/sessions/s0/messages")["items"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "hi"),
                                                            ("assistant", "answered")]  # fmt: skip
    turn = api.ok("GET", f"/v1/ns/acme/agents/bot/sessions/s0/turns/{messages[0]['turnId']}")
    assert turn["state"] == "completed" and turn["attempts"] == 2
    assert len(model_server.requests) == 2  # the late message asked the model nothing


def _runner(database_url: str, *workers: Process) -> Process:
    """The worker whose lease the running turn is under (owner ids are host:pid:suffix)."""
    owner = _running_owner(database_url)
    assert owner is not None
    [runner] = [w for w in workers if w.process.pid == int(owner.split(":")[1])]
    return runner


def test_a_pull_worker_killed_in_a_tool_call_is_swept_and_its_queued_turn_runs(
    api: Api, model_server: Any, database_url: str, pull_process_env: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    _setup(api, model_server, 1)
    call = {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 14}, "nonce": True}]}
    model_server.add(call, {"content": "Globex renews soon."}, call, {"content": "Again."})
    calls = tmp_path / "calls.jsonl"
    first = tool_worker(pull_process_env, database_url, calls)
    second = None
    try:
        _wait(lambda: live_workers(database_url) == 1, 60, "the first worker's lock")
        second = tool_worker(pull_process_env, database_url, calls)
        _wait(lambda: live_workers(database_url) == 2, 60, "the second worker's lock")
        for content in ("renewals?", "and again?"):  # the second waits behind the first
            api.ok("POST", "/v1/ns/acme/agents/bot/sessions/s0/message", 202,
                   json={"content": content})  # fmt: skip
        _wait(lambda: _nonces(calls), 30, "the tool call")
        _runner(database_url, first, second).kill()  # during the 4 s tool call
        killed_at = time.monotonic()
        _wait(lambda: _turn_attempts(database_url) >= 2, 60, "the takeover")
        took = time.monotonic() - killed_at
        print(f"taken over {took:.2f} s after the kill")
        _wait(lambda: _open_turns(api, 1) == 0, 60, "both turns")
    finally:
        errors = first.stop() + (second.stop() if second is not None else "")
    assert "Traceback" not in errors, errors
    assert SWEPT in errors, errors
    assert took < ACK_DEADLINE
    nonces = _nonces(calls)
    assert len(nonces) == len(set(nonces)) == 2, "a tool call ran again"
    messages = api.ok("GET", "/v1/ns/acme/agents/bot/sessions/s0/messages")["items"]
    first_turn = [m for m in messages if m["turnId"] == messages[0]["turnId"]]
    _assert_first_turn(first_turn)
    assert [m["content"] for m in messages if m["role"] == "user"] == ["renewals?", "and again?"]
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"] == "Again."


def _assert_first_turn(messages: list[dict[str, Any]]) -> None:
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[2]["content"] == INTERRUPTED
    assert messages[3]["content"] == "Globex renews soon."


def _turn_attempts(database_url: str) -> int:
    return int(_scalar(database_url, "SELECT max(attempts) FROM turns"))
