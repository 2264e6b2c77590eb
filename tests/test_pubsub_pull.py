"""Pull mode on Pub/Sub against the gcloud emulator: the gateway publishes through the outbox,
a worker consumes the dispatch, lifecycle and dead-letter subscriptions by streaming pull and
runs the turns with the same handler the push function uses.

The emulator implements what these tests rely on (checked here by the tests themselves):
`delivery_attempt` on pulled messages of a subscription with a dead-letter policy, the retry
policy's backoff, and forwarding to the dead-letter topic after `max_delivery_attempts` with
the `CloudPubSubDeadLetterSource*` attributes.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import samples
from conftest import ROOT, TEST_CONFIG, Api, read_stream
from talon import entrypoints
from talon.broker.base import Delivery, Handler, Result
from talon.broker.outbox import DISPATCH_TOPIC
from talon.broker.pubsub import PubSubPublisher
from talon.broker.pubsub_pull import PubSubConsumer
from talon.broker.pubsub_topology import create_pull_topology, delete_pull_topology
from talon.config import MessageBrokerSettings, load_settings
from talon.services import Services
from talon.store.database import Database
from talon.store.local_postgres import free_port
from test_models import policy

PROJECT = "talon-test"
BASE = "/v1/ns/acme/agents/bot/sessions"
_ids = itertools.count()


def pull_env(run: str, emulator: str, database_url: str) -> dict[str, str]:
    """The variables that put Talon on pull-mode Pub/Sub with this run's names."""
    return {
        "PUBSUB_EMULATOR_HOST": emulator,
        "TALON_CONTROL_PLANE_DATABASE_URL": database_url,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER": "gcp_pubsub",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PROJECT": PROJECT,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_TOPIC": f"dispatch-{run}",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_TOPIC": f"lifecycle-{run}",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DEAD_LETTER_TOPIC": f"dead-{run}",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_SUBSCRIPTION": f"dispatch-pull-{run}",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_SUBSCRIPTION": f"lifecycle-pull-{run}",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DEAD_LETTER_SUBSCRIPTION": f"dead-pull-{run}",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_MAX_DELIVERY_ATTEMPTS": "5",
        "TALON_WORKER_PULL_MODE": "true",
    }


@pytest.fixture
def broker(
    pubsub_emulator: str, gateway_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MessageBrokerSettings]:
    """Fresh topics and pull subscriptions (retry 1-2 s, dead letters after 5 deliveries);
    the gateway publishing to them."""
    env = pull_env(f"p{next(_ids)}", pubsub_emulator, database_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    entrypoints.reset()
    settings = load_settings(TEST_CONFIG).control_plane.message_broker
    create_pull_topology(settings, minimum_backoff_seconds=1, maximum_backoff_seconds=2)
    yield settings
    entrypoints.reset()
    delete_pull_topology(settings)


class RecordingConsumer(PubSubConsumer):
    """The real consumer; every delivery and what the handler answered are noted, and
    `fail_first` makes the handler raise on that many dispatch deliveries of each message
    (a handler that keeps failing, e.g. on a bug) before the real one runs."""

    def __init__(self, settings: MessageBrokerSettings, fail_first: int = 0) -> None:
        super().__init__(settings)
        self.fail_first = fail_first
        self.seen: list[tuple[Delivery, str]] = []
        self.times: list[float] = []  # when each of `seen` was handled (monotonic)
        self._lock = threading.Lock()

    def consume(self, handler: Handler, stop: threading.Event, *, concurrency: int) -> None:
        def recording(delivery: Delivery) -> Result:
            failing = delivery.attempt <= self.fail_first and not delivery.dead_lettered
            try:
                if failing and delivery.topic == DISPATCH_TOPIC:
                    raise RuntimeError("a handler that keeps failing")
                result = handler(delivery)
            except Exception:
                self._note(delivery, "raised")
                raise
            self._note(delivery, result.outcome)
            return result

        super().consume(recording, stop, concurrency=concurrency)

    def _note(self, delivery: Delivery, outcome: str) -> None:
        with self._lock:
            self.seen.append((delivery, outcome))
            self.times.append(time.monotonic())

    def dispatches(self) -> list[tuple[Delivery, str]]:
        with self._lock:
            return [(d, outcome) for d, outcome in self.seen if d.topic == DISPATCH_TOPIC]


@pytest.fixture
def pull_worker(broker: MessageBrokerSettings) -> Iterator[Callable[..., RecordingConsumer]]:
    """Start in-process pull workers on the emulator (stopped at teardown)."""
    running: list[tuple[threading.Event, threading.Thread, Services]] = []

    def start(*, fail_first: int = 0, lease_seconds: float = 2.0) -> RecordingConsumer:
        services = Services.start(load_settings(TEST_CONFIG))
        worker = services.worker(demo_fallback=True, lease_seconds=lease_seconds)
        consumer = RecordingConsumer(broker, fail_first)
        stop = threading.Event()
        thread = threading.Thread(
            target=worker.run_pull, args=(stop,),
            kwargs={"concurrency": 2, "consumer": consumer}, daemon=True,
        )  # fmt: skip
        thread.start()
        running.append((stop, thread, services))
        return consumer

    yield start
    for stop, thread, services in running:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()
        services.close()


def _agent(api: Api) -> None:
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})


def _post(api: Api, session: str, content: str) -> dict[str, Any]:
    if api.get(f"{BASE}/{session}").status_code == 404:
        api.ok("POST", BASE, 201, json={"id": session})
    return api.ok("POST", f"{BASE}/{session}/message", 202, json={"content": content})


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _answers(api: Api, session: str) -> list[str]:
    messages = api.ok("GET", f"{BASE}/{session}/messages")["items"]
    return [m["content"] for m in messages if m["role"] == "assistant"]


def test_turns_run_through_streaming_pull(api: Api, pull_worker: Any) -> None:
    _agent(api)
    consumer = pull_worker()
    posted = {f"s{i}": [_post(api, f"s{i}", f"s{i} hello {r}") for r in range(2)]
              for i in range(3)}  # fmt: skip
    for session, accepted in posted.items():
        events = read_stream(api, f"{BASE}/{session}/stream", last_event_id=0,
                             params={"untilTurnEnd": "true"}, timeout=60)  # fmt: skip
        assert events[-1]["type"] == "turn.completed", events[-3:]
        _wait(lambda s=session: len(_answers(api, s)) == 2, 30, "both answers")
        assert _answers(api, session) == [f"(demo model) Received: {session} hello {r}"
                                          for r in range(2)]  # fmt: skip
        for turn in accepted:
            view = api.ok("GET", f"{BASE}/{session}/turns/{turn['turnId']}")
            assert view["state"] == "completed" and view["attempts"] == 1
    # Every dispatch event was acknowledged (a delivery that found its session busy was
    # deferred and acknowledged when it came back).
    _wait(lambda: _settled(consumer) == _turn_ids(posted), 30, "every event acknowledged")
    # A changed template goes out on the lifecycle topic; the worker pulls and handles it.
    api.ok("PATCH", "/v1/ns/acme/agent-templates/support",
           json={"definition": {"systemPrompt": "Be brief."}})  # fmt: skip

    def lifecycle() -> list[dict[str, Any]]:
        return [d.payload for d, outcome in list(consumer.seen)
                if d.topic == "lifecycle" and outcome == "ack"]  # fmt: skip

    _wait(lifecycle, 30, "the lifecycle event")
    assert lifecycle()[0]["kind"] == "AgentTemplate" and lifecycle()[0]["name"] == "support"


def test_a_delivery_for_a_busy_session_comes_back_when_the_lease_expires(
    api: Api, pull_worker: Any, db: Database
) -> None:
    """Another worker holds the turn: alive (its liveness lock is held) but hung, so its
    lease runs out in 4 s. The delivery is not nacked into a quick retry loop: its deadline
    is set to the lease's expiry, and then the turn is taken over and resumed."""
    from talon.runtime.claim import Claim, ClaimOptions, claim
    from talon.store.liveness import OwnerLock

    _agent(api)
    accepted = _post(api, "s1", "taken over")
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid FROM sessions WHERE id = 's1'")
    hung = OwnerLock(db.raw_connect, "a-worker-that-hangs")
    try:
        assert hung.wait_held(10)
        assert isinstance(claim(db, uid, ClaimOptions("a-worker-that-hangs", 4.0, 5)), Claim)
        held_at = time.monotonic()
        consumer = pull_worker()
        _wait(lambda: _answers(api, "s1"), 60, "the answer")
    finally:
        hung.close()
    outcomes = [o for _, o in consumer.dispatches()]
    assert outcomes == ["retry", "ack"], outcomes
    came_back = [t for (d, _), t in zip(consumer.seen, consumer.times, strict=True)
                 if d.topic == DISPATCH_TOPIC][1]  # fmt: skip
    assert came_back - held_at >= 4.0  # not before the lease ran out
    turn = api.ok("GET", f"{BASE}/s1/turns/{accepted['turnId']}")
    assert turn["state"] == "completed" and turn["attempts"] == 2


def _turn_ids(posted: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {turn["turnId"] for accepted in posted.values() for turn in accepted}


def _settled(consumer: RecordingConsumer) -> set[str]:
    return {d.payload["turnId"] for d, outcome in consumer.dispatches() if outcome == "ack"}


def test_duplicate_and_late_deliveries_yield_one_turn(
    api: Api, pull_worker: Any, broker: MessageBrokerSettings, db: Database
) -> None:
    _agent(api)
    accepted = _post(api, "s1", "once only")
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid::text FROM sessions WHERE id = 's1'")
    payload = {"sessionUid": uid, "turnId": accepted["turnId"]}
    publisher = PubSubPublisher(broker)
    # Duplicates published before any worker runs: they arrive together with the original.
    for n in range(3):
        publisher.publish(DISPATCH_TOPIC, payload, key=uid, outbox_id=-1 - n)
    consumer = pull_worker()
    _wait(lambda: _answers(api, "s1"), 60, "the answer")
    # A late duplicate, after the turn completed.
    publisher.publish(DISPATCH_TOPIC, payload, key=uid, outbox_id=-9)
    _wait(lambda: sum(o == "ack" for _, o in consumer.dispatches()) >= 5, 60,
          "all five deliveries acknowledged")  # fmt: skip
    time.sleep(1)
    assert _answers(api, "s1") == ["(demo model) Received: once only"]
    turn = api.ok("GET", f"{BASE}/s1/turns/{accepted['turnId']}")
    assert turn["state"] == "completed" and turn["attempts"] == 1
    assert [s["name"] for s in turn["steps"]] == ["load-knowledge", "call-model",
                                                  "write-next-message"]  # fmt: skip
    outcomes = [o for _, o in consumer.dispatches()]
    assert outcomes.count("ack") == 5 and set(outcomes) <= {"ack", "retry"}, outcomes


def test_a_message_that_keeps_failing_is_dead_lettered_and_its_turn_fails(
    api: Api, pull_worker: Any
) -> None:
    """The emulator redelivers with the retry policy's backoff, counts `delivery_attempt`,
    and after 5 deliveries moves the message to the dead-letter topic; the worker reads it
    from the dead-letter subscription and fails the turn, the reason in the stream."""
    _agent(api)
    consumer = pull_worker(fail_first=100)
    accepted = _post(api, "s1", "doomed")
    events = read_stream(api, f"{BASE}/s1/stream", last_event_id=0,
                         params={"untilTurnEnd": "true"}, timeout=90)  # fmt: skip
    failed = events[-1]
    assert failed["type"] == "turn.failed" and failed["turnId"] == accepted["turnId"]
    assert failed["data"]["code"] == "dead_lettered"
    assert failed["data"]["message"] == (
        "its dispatch event failed 5 deliveries and was dead-lettered"
    )
    seen = [(d.attempt, d.dead_lettered, outcome) for d, outcome in consumer.dispatches()]
    assert seen == [*[(n, False, "raised") for n in range(1, 6)], (5, True, "ack")]
    turn = api.ok("GET", f"{BASE}/s1/turns/{accepted['turnId']}")
    assert turn["state"] == "failed" and turn["error"]["code"] == "dead_lettered"
    # The session goes on: the next message runs.
    consumer.fail_first = 0
    _post(api, "s1", "after the dead one")
    _wait(lambda: _answers(api, "s1"), 60, "the next turn's answer")


# --- a killed pull worker --------------------------------------------------------------------


def _process_env(broker_env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
    return {**base, **broker_env, "TALON_LOG_LEVEL": "WARNING"}


@pytest.fixture
def process_env(
    pubsub_emulator: str, database_url: str, broker: MessageBrokerSettings
) -> dict[str, str]:
    """The environment of a worker process on this test's topics and subscriptions."""
    env = {key: os.environ[key] for key in os.environ if key.startswith("TALON_CONTROL_PLANE")}
    env["PUBSUB_EMULATOR_HOST"] = pubsub_emulator
    env["TALON_WORKER_PULL_MODE"] = "true"
    return _process_env(env)


@pytest.mark.slow
def test_sigkill_of_talon_worker_during_a_model_call_resumes_from_the_journal(
    api: Api, model_server: Any, process_env: dict[str, str]
) -> None:
    """`talon worker` itself on gcp_pubsub + pullMode (the seed's configuration): killed while
    the model answers, its message comes back after the ack deadline it stopped extending,
    and the next worker resumes the turn."""
    template = samples.template("acme")
    template["definition"]["modelPolicy"] = policy(model_server.url, "primary")
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme"), template,
                                                 samples.agent("acme")]})  # fmt: skip
    model_server.add({"hang": 30, "content": "never delivered"}, {"content": "answered"})
    accepted = _post(api, "s0", "hi")

    health_port = free_port()

    def spawn() -> subprocess.Popen[bytes]:
        # $PORT as Cloud Run sets it: the worker answers the platform's /healthz probes.
        return subprocess.Popen(
            [sys.executable, "-m", "talon.cli.main", "worker", "--lease-seconds", "1.5"],
            cwd=ROOT, env={**process_env, "PORT": str(health_port)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    first = spawn()
    try:
        _wait(lambda: model_server.requests, 30, "the model call")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    second = spawn()
    killed_at = time.monotonic()
    try:
        # Within the ack deadline (10 s) the message is delivered again; the rest is the
        # new process starting (slow on a loaded machine).
        _wait(lambda: _answers(api, "s0"), 120, "the resumed turn")
        print(f"resumed {time.monotonic() - killed_at:.1f} s after the kill")
        assert httpx.get(f"http://127.0.0.1:{health_port}/healthz").status_code == 200
    finally:
        second.send_signal(signal.SIGTERM)
        _, errors = second.communicate(timeout=60)
        print(errors.decode()[-4000:])
    assert second.returncode == 0 and b"Traceback" not in errors, errors.decode()
    assert _answers(api, "s0") == ["answered"]
    turn = api.ok("GET", f"{BASE}/s0/turns/{accepted['turnId']}")
    assert turn["state"] == "completed" and turn["attempts"] == 2


@pytest.mark.slow
def test_kills_of_the_pull_worker_complete_every_turn_once_and_repeat_no_tool_call(
    api: Api, model_server: Any, process_env: dict[str, str], tmp_path: Any
) -> None:
    sessions = 3
    template = samples.template("acme")
    template["definition"]["modelPolicy"] = policy(model_server.url, "primary")
    api.ok("POST", "/v1/apply", json={"items": [samples.namespace("acme"), template,
                                                 samples.agent("acme")]})  # fmt: skip
    tool_call = {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 14},
                                 "nonce": True}]}  # fmt: skip
    model_server.add(*[tool_call, {"content": "Globex renews soon."}] * 40)
    for i in range(sessions):
        for round_ in range(2):
            _post(api, f"s{i}", f"s{i} renewals {round_}")
    calls_file = tmp_path / "calls.jsonl"
    database_url = process_env["TALON_CONTROL_PLANE_DATABASE_URL"]

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "tool_worker.py"), database_url,
             str(calls_file)],
            cwd=ROOT, env={**process_env, "PYTHONPATH": str(ROOT / "tests")},
            stderr=subprocess.PIPE,
        )  # fmt: skip

    def calls() -> list[str]:
        if not calls_file.exists():
            return []
        return [json.loads(line)["nonce"] for line in calls_file.read_text().splitlines()]

    def open_turns() -> int:
        total = 0
        for i in range(sessions):
            view = api.ok("GET", f"{BASE}/s{i}")
            total += (view["activeTurn"] is not None) + view["queuedTurns"]
        return total

    worker, kills = spawn(), 0
    deadline = time.monotonic() + 180
    delays = itertools.cycle([0.0, 0.05, 0.3])
    try:
        while time.monotonic() < deadline and open_turns():
            if kills >= 3:
                time.sleep(0.2)
                continue
            seen = len(calls())  # kill once a tool call has begun: during it or just after
            while len(calls()) == seen and open_turns() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(next(delays))
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            kills += 1
            worker = spawn()
    finally:
        worker.send_signal(signal.SIGTERM)
        _, errors = worker.communicate(timeout=60)
    assert kills == 3
    assert open_turns() == 0, "turns left open"
    assert b"Traceback" not in errors, errors.decode()
    nonces = calls()
    assert len(nonces) == len(set(nonces)), "a tool call ran twice"
    resumed = 0
    for i in range(sessions):
        messages = api.ok("GET", f"{BASE}/s{i}/messages")["items"]
        users = [m["content"] for m in messages if m["role"] == "user"]
        assert users == [f"s{i} renewals {r}" for r in range(2)]
        finals = [m for m in messages if m["role"] == "assistant" and not m.get("toolCalls")]
        assert len(finals) == 2  # one final answer per turn: none lost, none doubled
        for message in messages:
            for call in message.get("toolCalls") or []:
                answers = [m for m in messages if m.get("toolCallId") == call["id"]]
                assert len(answers) == 1
        for turn_id in {m["turnId"] for m in finals}:
            turn = api.ok("GET", f"{BASE}/s{i}/turns/{turn_id}")
            assert turn["state"] == "completed"
            resumed += turn["attempts"] > 1
    assert resumed >= 1, "no kill landed inside a turn; the test proved nothing"
