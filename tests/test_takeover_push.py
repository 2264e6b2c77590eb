"""Takeover on the Pub/Sub push path: the dispatch function runs in its own process (as one
Cloud Run instance), the gcloud emulator pushes to it, and the process is SIGKILLed mid-turn.
The next delivery for the session, to another instance behind the same URL, finds the dead
instance's lease and takes the turn over at once instead of answering "busy" until the 30 s
lease runs out. The turn completes once."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.cloud import pubsub_v1
from test_crash import _open_turns, _setup
from test_takeover import TAKEOVER_BOUND, _wait, live_workers

from conftest import ROOT, TEST_CONFIG, Api
from talon import entrypoints
from talon.store.local_postgres import free_port, wait_for_port

pytestmark = pytest.mark.slow
PROJECT = "talon-test"
_ids = itertools.count()


@pytest.fixture
def push_env(
    pubsub_emulator: str, gateway_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """Fresh topics, a push subscription to a free port, and Talon (the in-process gateway and
    the dispatch processes' environment) set to use them."""
    n = next(_ids)
    names = {"dispatch": f"takeover-dispatch-{n}", "lifecycle": f"takeover-lifecycle-{n}"}
    port = free_port()
    env = {
        "PUBSUB_EMULATOR_HOST": pubsub_emulator,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER": "gcp_pubsub",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PROJECT": PROJECT,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_TOPIC": names["dispatch"],
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_TOPIC": names["lifecycle"],
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_VERIFICATION": "none",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    entrypoints.reset()  # the gateway publishes through the emulator from now on
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topics = {k: publisher.topic_path(PROJECT, v) for k, v in names.items()}
    for topic in topics.values():
        publisher.create_topic(name=topic)
    subscription = subscriber.subscription_path(PROJECT, f"takeover-push-{n}")
    subscriber.create_subscription(
        name=subscription,
        topic=topics["dispatch"],
        push_config={"push_endpoint": f"http://127.0.0.1:{port}/"},
        ack_deadline_seconds=60,
    )
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
    process_env.update(env)
    process_env["TALON_CONTROL_PLANE_DATABASE_URL"] = database_url
    process_env["TALON_CONFIG"] = str(TEST_CONFIG)
    process_env["TALON_LOG_LEVEL"] = "WARNING"
    yield {"port": port, "env": process_env}
    subscriber.delete_subscription(subscription=subscription)
    for topic in topics.values():
        publisher.delete_topic(topic=topic)


class DispatchInstance:
    """The dispatch function under functions-framework in its own process group."""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", "dispatch",
             "--source", str(ROOT / "functions" / "dispatch" / "main.py"),
             "--port", str(port), "--host", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        wait_for_port("127.0.0.1", port, timeout=60)
        deadline = time.monotonic() + 60
        while True:  # serving: the function (and its worker, with its lock) is built
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the dispatch instance did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> str:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            _, err = self.process.communicate()
        return err.decode()


@pytest.mark.parametrize("next_message", [False, True], ids=["redelivery", "next-message"])
def test_a_killed_dispatch_instances_turn_is_taken_over_by_the_next_delivery(
    api: Api, model_server, push_env: dict[str, Any], database_url: str, next_message: bool
) -> None:
    """The next delivery is Pub/Sub's redelivery of the push the dead instance never
    answered, or the push of the session's next message: either finds the dead instance's
    lease and takes the turn over."""
    _setup(api, model_server, 1)
    model_server.add(
        {"hang": 60, "content": "never delivered"}, {"content": "first"}, {"content": "second"}
    )
    base = "/v1/ns/acme/agents/bot/sessions/s0"
    api.ok("POST", f"{base}/message", 202, json={"content": "one"})
    first = DispatchInstance(push_env["port"], push_env["env"])
    second = None
    try:
        _wait(lambda: model_server.requests, 60, "the first instance's model call")
        first.kill()
        # Another instance behind the same push endpoint.
        second = DispatchInstance(push_env["port"], push_env["env"])
        if next_message:
            api.ok("POST", f"{base}/message", 202, json={"content": "two"})
        took = _wait(lambda: _open_turns(api, 1) == 0, TAKEOVER_BOUND, "the takeover")
    finally:
        first.kill()
        errors = second.stop() if second is not None else ""
    assert "Traceback" not in errors, errors
    assert took < TAKEOVER_BOUND  # far below the 30 s lease the dead instance left
    _wait(lambda: live_workers(database_url) == 0, 10, "the stopped instances' locks to go")
    messages = api.ok("GET", f"{base}/messages")["items"]
    expected = [("user", "one"), ("user", "two"), ("assistant", "first"), ("assistant", "second")]
    if not next_message:
        expected = [("user", "one"), ("assistant", "first")]
    assert [(m["role"], m["content"]) for m in messages] == expected
    first_turn = api.ok("GET", f"{base}/turns/{messages[0]['turnId']}")
    assert first_turn["state"] == "completed" and first_turn["attempts"] == 2
