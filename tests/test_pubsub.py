"""The gcp_pubsub broker against the gcloud Pub/Sub emulator: the gateway publishes through the
outbox, the emulator pushes to the dispatch function over HTTP, the turn runs."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import pytest
from google.cloud import pubsub_v1
from otlp_receiver import OtlpReceiver

import samples
from conftest import TEST_CONFIG, Api, read_stream, sse_events
from talon import entrypoints
from talon.api import push as push_module
from talon.api.push import SWEEP_TOKEN_HEADER
from talon.broker.outbox import DISPATCH_TOPIC, OUTBOX_COMMITTED, enqueue
from talon.broker.pubsub import PubSubPublisher
from talon.broker.relay import OutboxRelay
from talon.broker.signing import SIGNATURE_ATTRIBUTE, sign, signed_by
from talon.config import MessageBrokerSettings
from talon.store.database import Database

PROJECT = "talon-test"
PUSH_TOKEN = "push-secret-123"
_ids = itertools.count()


@pytest.fixture
def broker_env(
    pubsub_emulator: str, dispatch_server, gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Fresh topics and a push subscription to the dispatch function; Talon set to use them."""
    n = next(_ids)
    names = {"dispatch": f"dispatch-{n}", "lifecycle": f"lifecycle-{n}"}
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    env = {
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER": "gcp_pubsub",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PROJECT": PROJECT,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_TOPIC": names["dispatch"],
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_TOPIC": names["lifecycle"],
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_VERIFICATION": "token",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_TOKEN": PUSH_TOKEN,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    entrypoints.reset()  # rebuild services with the broker settings above
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topics = {k: publisher.topic_path(PROJECT, v) for k, v in names.items()}
    for topic in topics.values():
        publisher.create_topic(name=topic)
    subscription = subscriber.subscription_path(PROJECT, f"push-{n}")
    subscriber.create_subscription(
        name=subscription,
        topic=topics["dispatch"],
        push_config={"push_endpoint": f"{dispatch_server.url}/"},
        ack_deadline_seconds=30,
    )
    yield {"dispatch_topic": topics["dispatch"], "subscription": subscription}
    subscriber.delete_subscription(subscription=subscription)
    for topic in topics.values():
        publisher.delete_topic(topic=topic)


BASE = "/v1/ns/acme/agents/bot/sessions"


def _one_turn(api: Api, content: str) -> dict[str, Any]:
    """Session s1 of a fresh acme/bot, one message, its turn run to completion (read from
    its stream); the POST's answer."""
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    api.ok("POST", BASE, 201, json={"id": "s1"})
    accepted = api.ok("POST", f"{BASE}/s1/message", 202, json={"content": content})
    events = read_stream(api, f"{BASE}/s1/stream", last_event_id=accepted["streamFrom"],
                         params={"untilTurnEnd": "true"}, timeout=60)  # fmt: skip
    assert events[-1]["type"] == "turn.completed"
    return accepted


def test_turn_runs_through_pubsub_push(api: Api, broker_env: dict[str, str]) -> None:
    _one_turn(api, "via pubsub")
    messages = api.ok("GET", f"{BASE}/s1/messages")["items"]
    assert [m["content"] for m in messages] == ["via pubsub", "(demo model) Received: via pubsub"]


class _Gated:
    """A publisher whose publishes are started only once `gate` opens; `submit` returns at
    once, as the client's does."""

    def __init__(self, publisher: Any) -> None:
        self.publisher, self.gate = publisher, threading.Event()
        self.waiting = threading.Event()
        self.submitted: list[str] = []  # the keys handed over, in order

    def submit(
        self, topic: str, payload: dict[str, Any], *, key: str, outbox_id: int
    ) -> Future[str]:
        self.waiting.set()
        self.submitted.append(key)
        future: Future[str] = Future()

        def later() -> None:
            if not self.gate.wait(30):
                future.set_exception(TimeoutError("the test never opened the gate"))
                return
            inner = self.publisher.submit(topic, payload, key=key, outbox_id=outbox_id)
            future.set_result(inner.result(timeout=30))

        threading.Thread(target=later, daemon=True).start()
        return future

    def close(self) -> None:
        self.publisher.close()


def test_a_message_posted_for_its_events_streams_them_while_its_dispatch_is_published(
    api: Api, broker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A posted stream answers with its turn's first events without waiting for the
    publish (the open response keeps a Cloud Run instance's CPU); a JSON post waits for it,
    since its instance may get no CPU once it has answered."""
    _one_turn(api, "warm up")
    relay = entrypoints.services().relay
    assert relay is not None
    gated = _Gated(relay.publisher)
    monkeypatch.setattr(relay, "publisher", gated)
    received: list[dict[str, Any]] = []
    first_arrived = threading.Event()

    def post_for_events() -> None:
        body, accept = {"content": "streamed"}, {"Accept": "text/event-stream"}
        with api.http.stream("POST", f"{BASE}/s1/message", json=body, headers=accept) as reply:
            assert reply.status_code == 202
            for event in sse_events(reply.iter_lines()):
                received.append(event)
                first_arrived.set()

    streaming = threading.Thread(target=post_for_events)
    streaming.start()
    arrived_while_held = first_arrived.wait(10)
    assert gated.waiting.wait(10)
    gated.gate.set()  # now the dispatch message goes out, and the turn runs
    streaming.join(timeout=60)
    assert arrived_while_held, "the first event waited for the publish"
    assert received[0]["type"] == "message.created"
    rest = received
    assert rest[-1]["type"] == "turn.completed"
    # The server ends the stream's subscription a moment after its last event: until then a
    # JSON post sees an open stream and publishes beside it without waiting (below).
    listener = entrypoints.services().listener()
    _wait_for(lambda: listener.subscribers() == 0, "the posted stream's subscription to end")
    gated.gate.clear()
    gated.waiting.clear()
    answered = threading.Event()

    def post_json() -> None:
        api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "as json"})
        answered.set()

    poster = threading.Thread(target=post_json)
    poster.start()
    assert gated.waiting.wait(10)
    assert not answered.wait(0.5)  # held by its publish
    gated.gate.set()
    poster.join(timeout=30)
    assert answered.is_set()
    # With a stream open in the process (the dashboard follows its session while it posts
    # JSON), a JSON post does not wait either: the open request keeps the instance's CPU.
    _wait_for(lambda: not relay._in_flight, "the earlier publishes")
    # The JSON post's turn over first: a stream until a turn's end must wait for the next.
    _wait_for(lambda: api.ok("GET", f"{BASE}/s1")["activeTurn"] is None, "the last turn")
    gated.gate.clear()
    gated.waiting.clear()
    held: list[dict[str, Any]] = []
    position = api.ok("GET", f"{BASE}/s1")["lastEventId"]

    def follow() -> None:  # held as a chat view holds it, up to the next turn's end
        with api.http.stream("GET", f"{BASE}/s1/stream", params={"maxSeconds": "60"},
                             headers={"Last-Event-ID": str(position)}) as reply:  # fmt: skip
            for event in sse_events(reply.iter_lines()):
                held.append(event)
                if event["type"] == "turn.completed":
                    return

    following = threading.Thread(target=follow)
    following.start()
    _wait_for(lambda: listener.subscribers() > 0, "the stream's subscription")
    beside = threading.Event()
    poster = threading.Thread(target=lambda: (
        api.ok("POST", f"{BASE}/s1/message", 202, json={"content": "beside a stream"}),
        beside.set(),
    ))  # fmt: skip
    poster.start()
    try:
        assert beside.wait(10), "the JSON post waited for its publish"
        assert gated.waiting.is_set() and not gated.gate.is_set()  # answered, still held
    finally:
        gated.gate.set()
        poster.join(timeout=60)
    following.join(timeout=60)
    assert held[-1]["type"] == "turn.completed"


def test_a_row_published_again_by_the_sweep_changes_nothing(
    api: Api, broker_env: dict[str, str], dispatch_server, db: Database
) -> None:
    """A gateway that dies between its publish and the batched deletion leaves the row; the
    sweep publishes it again, and the second delivery of a finished turn runs nothing."""
    accepted = _one_turn(api, "once")
    with db.transaction() as tx:  # a JSON post deletes what it published before answering
        assert tx.scalar("SELECT count(*) FROM outbox") == 0
    with db.transaction() as tx:  # the row as the dead gateway left it, seconds ago
        uid = tx.scalar("SELECT uid::text FROM sessions WHERE id = 's1'")
        row = enqueue(tx, DISPATCH_TOPIC, {"sessionUid": uid, "turnId": accepted["turnId"]},
                      key=uid)  # fmt: skip
        tx.execute("UPDATE outbox SET created_at = now() - interval '1 minute' WHERE id = %s",
                   (row,))  # fmt: skip
    swept = httpx.post(f"{dispatch_server.url}/sweep", headers={SWEEP_TOKEN_HEADER: PUSH_TOKEN})
    assert swept.status_code == 200 and swept.json() == {"published": 1}
    # Its delivery, as the emulator pushes it (and as the dispatch function answers it,
    # synchronously here): settled, with nothing run again.
    duplicate = _envelope({"sessionUid": uid, "turnId": accepted["turnId"]})
    assert httpx.post(f"{dispatch_server.url}/", json=duplicate).status_code == 204
    messages = api.ok("GET", f"{BASE}/s1/messages")["items"]
    assert [m["content"] for m in messages] == ["once", "(demo model) Received: once"]
    with db.transaction() as tx:
        assert tx.scalar("SELECT count(*) FROM turns") == 1
        assert tx.scalar("SELECT attempts FROM turns") == 1


def test_relay_publishes_committed_rows_once(
    database_url: str, broker_env: dict[str, str], db: Database
) -> None:
    subscriber = pubsub_v1.SubscriberClient()
    pull = subscriber.subscription_path(PROJECT, "pull-" + broker_env["subscription"][-6:])
    subscriber.create_subscription(name=pull, topic=broker_env["dispatch_topic"])
    try:
        # Rows a crashed gateway committed but never published:
        with db.transaction() as tx:
            for i in range(3):
                enqueue(tx, DISPATCH_TOPIC, {"sessionUid": f"orphan-{i}"}, key=f"k{i}")
        settings = MessageBrokerSettings(
            driver="gcp_pubsub", project=PROJECT, push_token=PUSH_TOKEN,
            dispatch_topic=broker_env["dispatch_topic"].rsplit("/", 1)[-1],
        )  # fmt: skip
        relay = OutboxRelay(db, PubSubPublisher(settings))
        assert relay.flush(older_than_seconds=0) == 3
        assert relay.flush(older_than_seconds=0) == 0
        received = _pulled(subscriber, pull, 3)
        payloads = sorted(json.loads(m.message.data)["sessionUid"] for m in received)
        assert payloads == ["orphan-0", "orphan-1", "orphan-2"]
        assert {m.message.attributes["eventTopic"] for m in received} == {"dispatch"}
        # Signed with the push token; the token itself is nowhere in the message.
        for m in received:
            signature = m.message.attributes[SIGNATURE_ATTRIBUTE]
            assert signed_by(PUSH_TOKEN, "dispatch", m.message.data, signature)
            assert PUSH_TOKEN not in str(m.message)
        with db.transaction() as tx:
            assert tx.scalar("SELECT count(*) FROM outbox") == 0
    finally:
        subscriber.delete_subscription(subscription=pull)


def _pulled(subscriber: Any, subscription: str, count: int) -> list[Any]:
    """`count` messages from a pull subscription (acknowledged), within 30 s."""
    received: list[Any] = []
    deadline = time.monotonic() + 30
    while len(received) < count:
        assert time.monotonic() < deadline, f"{len(received)} of {count} messages arrived"
        reply = subscriber.pull(subscription=subscription, max_messages=10, timeout=10)
        received += reply.received_messages
        if ack_ids := [m.ack_id for m in reply.received_messages]:
            subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids)
    return received


class _FailingAfter:
    """A publisher whose publishes fail from the `ok`+1-th on (the broker went away)."""

    def __init__(self, publisher: Any, ok: int) -> None:
        self.publisher, self.ok = publisher, ok

    def submit(
        self, topic: str, payload: dict[str, Any], *, key: str, outbox_id: int
    ) -> Future[str]:
        if self.ok == 0:
            failed: Future[str] = Future()
            failed.set_exception(ConnectionError("broker unavailable"))
            return failed
        self.ok -= 1
        return self.publisher.submit(topic, payload, key=key, outbox_id=outbox_id)

    def close(self) -> None:
        self.publisher.close()


def _published_rows_setup(
    broker_env: dict[str, str], db: Database, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, str, MessageBrokerSettings]:
    subscriber = pubsub_v1.SubscriberClient()
    pull = subscriber.subscription_path(PROJECT, "fast-" + broker_env["subscription"][-6:])
    subscriber.create_subscription(name=pull, topic=broker_env["dispatch_topic"])
    settings = MessageBrokerSettings(
        driver="gcp_pubsub", project=PROJECT, push_token=PUSH_TOKEN,
        dispatch_topic=broker_env["dispatch_topic"].rsplit("/", 1)[-1],
    )  # fmt: skip
    return subscriber, pull, settings


def test_the_relay_publishes_what_a_transaction_committed_and_deletes_it(
    broker_env: dict[str, str], db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit hook publishes the rows a commit announced, as written (nothing read
    back). Waiting for them (the default), it deletes them in one round trip before the
    committing request goes on; in the background (`in_background`), it makes no round trip
    and the rows of several commits are deleted later in one (`forget_published`, which a
    thread calls `forget_after` seconds after a publish). A failed publish leaves its row
    for the sweep."""
    from talon.store import statements

    subscriber, pull, settings = _published_rows_setup(broker_env, db, monkeypatch)
    publisher = _FailingAfter(PubSubPublisher(settings), ok=6)
    relay = OutboxRelay(db, publisher, forget_after=3600.0)  # this test deletes them itself
    trips: list[tuple[int, bool]] = []  # per round trip: its statements, whether it commits
    hook_trips: list[list[tuple[int, bool]]] = []  # the round trips of each hook's call
    run_batch = statements.run_batch

    def counting(connection: Any, work: Any, *, commit: bool = False) -> Any:
        trips.append((len(work), commit))
        return run_batch(connection, work, commit=commit)

    def observed(rows: list[Any]) -> None:
        trips.clear()
        try:
            relay.on_commit(rows)
        finally:
            hook_trips.append(list(trips))

    def pending() -> list[str]:
        with db.transaction() as tx:
            return [r["key"] for r in tx.all("SELECT key FROM outbox ORDER BY id")]

    def commit_rows(keys: range) -> None:
        with db.transaction() as tx:
            for i in keys:
                enqueue(tx, DISPATCH_TOPIC, {"sessionUid": f"s-{i}"}, key=f"k{i}")

    monkeypatch.setattr(statements, "run_batch", counting)
    db.on_commit(OUTBOX_COMMITTED, observed)
    try:
        commit_rows(range(0, 2))
        assert hook_trips == [[(1, True)]]  # published, then one deletion with its COMMIT
        assert pending() == []
        with relay.in_background():
            commit_rows(range(2, 4))
            commit_rows(range(4, 5))
        assert hook_trips[1:] == [[], []]  # nothing written by the committing thread
        assert pending() == ["k2", "k3", "k4"]
        _wait_for(lambda: not relay._in_flight, "the background publishes")
        trips.clear()
        assert relay.forget_published() == 3
        assert trips == [(1, True)]  # one deletion with its COMMIT
        assert pending() == []
        commit_rows(range(5, 7))  # the sixth publish goes out, the seventh fails
        assert pending() == ["k6"]
        received = _pulled(subscriber, pull, 6)
        sent = sorted(json.loads(m.message.data)["sessionUid"] for m in received)
        assert sent == [f"s-{i}" for i in range(6)]
        for m in received:  # as the sweep publishes them: signed, with their outbox ids
            assert signed_by(PUSH_TOKEN, "dispatch", m.message.data,
                             m.message.attributes[SIGNATURE_ATTRIBUTE])  # fmt: skip
            assert m.message.attributes["key"].startswith("k")
            assert int(m.message.attributes["outboxId"]) > 0
        relay.close()
        # The thread deletes them on its own, forget_after seconds after a publish.
        monkeypatch.undo()
        publisher.ok = 1
        relay = OutboxRelay(db, publisher, forget_after=0.05)
        with relay.in_background():
            commit_rows(range(7, 8))
        _wait_for(lambda: pending() == ["k6"], "the deletion of k7")
        relay.close()
        assert relay._forgetter is not None
        relay._forgetter.join(5)
        assert not relay._forgetter.is_alive()
    finally:
        db.on_commit(OUTBOX_COMMITTED, lambda rows: None)
        subscriber.delete_subscription(subscription=pull)


def test_closing_the_relay_waits_for_background_publishes_and_deletes_their_rows(
    broker_env: dict[str, str], db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process shutting down (Services.close) lets its background publishes be answered,
    within a bound, and deletes the rows that went out, else the sweep would publish them
    again; one whose answer does not come in time stays for the sweep."""
    subscriber, pull, settings = _published_rows_setup(broker_env, db, monkeypatch)
    gated = _Gated(PubSubPublisher(settings))
    relay = OutboxRelay(db, gated, forget_after=3600.0)
    db.on_commit(OUTBOX_COMMITTED, relay.on_commit)
    try:
        with relay.in_background(), db.transaction() as tx:
            enqueue(tx, DISPATCH_TOPIC, {"sessionUid": "s-0"}, key="k0")
        closing = threading.Thread(target=relay.close)
        closing.start()
        closing.join(0.3)
        assert closing.is_alive()  # waiting for the publish's answer
        gated.gate.set()
        closing.join(10)
        assert not closing.is_alive()
        with db.transaction() as tx:
            assert tx.scalar("SELECT count(*) FROM outbox") == 0
        _pulled(subscriber, pull, 1)
        gated.gate.clear()
        relay = OutboxRelay(db, gated, forget_after=3600.0)
        with relay.in_background(), db.transaction() as tx:
            enqueue(tx, DISPATCH_TOPIC, {"sessionUid": "s-1"}, key="k1")
        relay.close(wait_seconds=0.2)  # no answer in time: the row stays for the sweep
        with db.transaction() as tx:
            assert tx.scalar("SELECT count(*) FROM outbox") == 1
        gated.gate.set()
    finally:
        db.on_commit(OUTBOX_COMMITTED, lambda rows: None)
        subscriber.delete_subscription(subscription=pull)


def test_background_publishes_beyond_the_bound_are_left_to_the_sweep(
    broker_env: dict[str, str],
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While Pub/Sub does not answer, background publishes wait (up to their timeout), each
    holding its message: beyond `max_in_background` of them the relay hands no more over and
    leaves the rows to the sweep, so a gateway's memory does not grow with the request rate
    during an outage. Nothing is lost: the sweep publishes those rows, each once."""
    subscriber, pull, settings = _published_rows_setup(broker_env, db, monkeypatch)
    gated = _Gated(PubSubPublisher(settings))
    relay = OutboxRelay(db, gated, forget_after=3600.0, max_in_background=2)
    db.on_commit(OUTBOX_COMMITTED, relay.on_commit)

    def commit_rows(keys: range) -> None:
        with relay.in_background(), db.transaction() as tx:
            for i in keys:
                enqueue(tx, DISPATCH_TOPIC, {"sessionUid": f"s-{i}"}, key=f"k{i}")

    def pending() -> list[str]:
        with db.transaction() as tx:
            return [r["key"] for r in tx.all("SELECT key FROM outbox ORDER BY id")]

    try:
        with caplog.at_level(logging.WARNING, logger="talon.broker.relay"):
            commit_rows(range(0, 3))
            commit_rows(range(3, 4))
            assert gated.submitted == ["k0", "k1"]  # the bound: k2 and k3 were not handed over
            gated.gate.set()
            _wait_for(lambda: not relay._in_flight, "the answers to the first two")
            assert relay.forget_published() == 2
            assert pending() == ["k2", "k3"]
            commit_rows(range(4, 5))  # answered again: publishing in the background resumes
            assert gated.submitted == ["k0", "k1", "k4"]
        warnings = [r.getMessage() for r in caplog.records if r.name == "talon.broker.relay"]
        assert len(warnings) == 2, warnings  # one when the bound is hit, one when answered
        assert warnings[0].startswith("2 background publishes unanswered: outbox row")
        assert warnings[1] == "Pub/Sub answers again: 2 outbox rows were left to the sweep"
        _wait_for(lambda: not relay._in_flight, "the answer to k4")
        assert relay.forget_published() == 1
        assert relay.flush() == 2  # the sweep
        assert pending() == []
        received = _pulled(subscriber, pull, 5)
        assert sorted(m.message.attributes["key"] for m in received) == [f"k{i}" for i in range(5)]
        extra = subscriber.pull(subscription=pull, max_messages=10, timeout=2)
        assert list(extra.received_messages) == []  # each published once
    finally:
        gated.gate.set()
        relay.close(wait_seconds=1)
        db.on_commit(OUTBOX_COMMITTED, lambda rows: None)
        subscriber.delete_subscription(subscription=pull)


_EXITING_PROCESS = """
from talon import entrypoints
from talon.broker.outbox import DISPATCH_TOPIC, enqueue

services = entrypoints.services()
with services.publishing_in_background(), services.db.transaction() as tx:
    enqueue(tx, DISPATCH_TOPIC, {"sessionUid": "exiting"}, key="exiting")
# The interpreter exits now, as a gateway instance's process does on SIGTERM: the publish
# may still be in flight, and its row's deletion is half a second away.
"""


def test_a_process_exiting_lets_its_background_publishes_finish_and_deletes_their_rows(
    broker_env: dict[str, str], db: Database, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process-wide services are closed at the process's exit (gunicorn's worker and
    talon.serve run atexit hooks on SIGTERM): a published row is not left for the sweep to
    publish again."""
    subscriber, pull, _ = _published_rows_setup(broker_env, db, monkeypatch)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_CONTROL_PLANE_DA")}
        env.update(TALON_CONTROL_PLANE_DATABASE_URL=database_url, TALON_CONFIG=str(TEST_CONFIG))
        done = subprocess.run([sys.executable, "-c", _EXITING_PROCESS], env=env, timeout=60,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        with db.transaction() as tx:
            assert tx.scalar("SELECT count(*) FROM outbox") == 0
        (message,) = _pulled(subscriber, pull, 1)
        assert json.loads(message.message.data)["sessionUid"] == "exiting"
    finally:
        subscriber.delete_subscription(subscription=pull)


def _wait_for(condition: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.02)


def test_a_publish_is_a_producer_span_in_the_changes_trace(
    pubsub_emulator: str, broker_env: dict[str, str]
) -> None:
    """The relay's publish, in a process exporting traces: a PRODUCER span, child of the
    traceparent the outbox row carried, named by the message's `traceparent` attribute."""
    subscriber = pubsub_v1.SubscriberClient()
    pull = subscriber.subscription_path(PROJECT, "traced-" + broker_env["subscription"][-6:])
    subscriber.create_subscription(name=pull, topic=broker_env["dispatch_topic"])
    receiver = OtlpReceiver()
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    script = (
        "import sys\n"
        "from talon.broker.pubsub import PubSubPublisher\n"
        "from talon.config import MessageBrokerSettings\n"
        "from talon.telemetry.setup import configure_telemetry, flush_telemetry\n"
        "configure_telemetry()\n"
        "settings = MessageBrokerSettings(driver='gcp_pubsub', project=sys.argv[1],\n"
        "                                 dispatch_topic=sys.argv[2])\n"
        "payload = {'sessionUid': 'traced', 'traceparent': sys.argv[3]}\n"
        "print(PubSubPublisher(settings).publish('dispatch', payload, key='k', outbox_id=7))\n"
        "flush_telemetry()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALON_", "OTEL_"))}
    env |= {"PUBSUB_EMULATOR_HOST": pubsub_emulator, "OTEL_SERVICE_NAME": "talon-relay",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, PROJECT,
             broker_env["dispatch_topic"].rsplit("/", 1)[-1], f"00-{caller}-00f067aa0ba902b7-01"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        spans = receiver.wait_for(lambda found: any(s.name == "publish dispatch" for s in found))
        publish = next(s for s in spans if s.name == "publish dispatch")
        assert publish.kind == 4  # PRODUCER
        assert publish.trace_id == caller and publish.parent_id == "00f067aa0ba902b7"
        assert publish.attributes["messaging.system"] == "gcp_pubsub"
        assert publish.attributes["talon.outbox.id"] == 7
        assert publish.attributes["messaging.message.id"] == done.stdout.strip()
        reply = subscriber.pull(subscription=pull, max_messages=1, timeout=10)
        message = reply.received_messages[0].message
        assert message.attributes["traceparent"] == f"00-{caller}-{publish.span_id}-01"
    finally:
        receiver.close()
        subscriber.delete_subscription(subscription=pull)


def _envelope(
    payload: dict[str, Any],
    *,
    key: str | None = PUSH_TOKEN,
    topic: str = "dispatch",
    signed_data: bytes | None = None,
) -> dict[str, Any]:
    """A push envelope as Pub/Sub sends it; signed with `key` (None: unsigned) over
    `signed_data` (default: the data sent)."""
    data = json.dumps(payload).encode()
    attributes = {"eventTopic": topic}
    if key is not None:
        attributes[SIGNATURE_ATTRIBUTE] = sign(
            key, topic, data if signed_data is None else signed_data
        )
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": "1",
        },
        "subscription": "projects/p/subscriptions/s",
    }


def test_dispatch_function_verifies_and_validates_pushes(
    dispatch_server, broker_env: dict[str, str]
) -> None:
    payload = {"sessionUid": "not-a-uuid"}
    url = dispatch_server.url
    refused = {
        "unsigned": _envelope(payload, key=None),
        "signed with another key": _envelope(payload, key="not-the-push-token"),
        "data changed after signing": _envelope(payload, signed_data=b'{"sessionUid": "x"}'),
        "topic changed after signing": {**_envelope(payload), "message": {
            **_envelope(payload)["message"],
            "attributes": {**_envelope(payload)["message"]["attributes"],
                           "eventTopic": "lifecycle"}}},
    }  # fmt: skip
    for case, envelope in refused.items():
        answer = httpx.post(f"{url}/", json=envelope)
        assert answer.status_code == 401, (case, answer.text)
        assert answer.json()["error"]["code"] == "unauthenticated"
    bad = httpx.post(f"{url}/", json={"hello": "world"})
    assert bad.status_code == 400 and bad.json()["error"]["details"][0]["path"] == "message"
    for field, envelope in {
        "message.attributes": {"message": {"data": "", "attributes": ["eventTopic"]}},
        "message.attributes.eventTopic": {"message": {"data": "", "attributes": {"eventTopic": 1}}},
        "message.data": {"message": {"data": 12}},
        "deliveryAttempt": {**_envelope(payload), "deliveryAttempt": "soon"},
    }.items():
        answer = httpx.post(f"{url}/", json=envelope)
        assert answer.status_code == 400, (field, answer.text)
        assert answer.json()["error"]["details"][0]["path"] == field
    # A well-formed push with a payload we cannot use is acknowledged (logged), not retried.
    assert httpx.post(f"{url}/", json=_envelope(payload)).status_code == 204
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_secret_in_the_push_url_is_refused(dispatch_server, broker_env: dict[str, str]) -> None:
    """A push endpoint still configured with ?token= fails loudly, even with the right one."""
    for path in ("/", "/sweep"):
        answer = httpx.post(f"{dispatch_server.url}{path}", params={"token": PUSH_TOKEN},
                            json=_envelope({"sessionUid": "x"}),
                            headers={SWEEP_TOKEN_HEADER: PUSH_TOKEN})  # fmt: skip
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert "remove ?token=" in error["message"] and error["details"][0]["path"] == "token"


def test_sweep_route_publishes_orphans_without_traffic(
    dispatch_server, broker_env: dict[str, str], db: Database
) -> None:
    subscriber = pubsub_v1.SubscriberClient()
    pull = subscriber.subscription_path(PROJECT, "sweep-" + broker_env["subscription"][-6:])
    subscriber.create_subscription(name=pull, topic=broker_env["dispatch_topic"])
    # The push subscription would run these; detach it so only the pull one sees them.
    subscriber.delete_subscription(subscription=broker_env["subscription"])
    subscriber.create_subscription(name=broker_env["subscription"],
                                   topic=broker_env["dispatch_topic"])  # fmt: skip
    try:
        with db.transaction() as tx:  # committed 11 s ago and never published
            enqueue(tx, DISPATCH_TOPIC, {"sessionUid": "orphan"}, key="k")
            tx.execute("UPDATE outbox SET created_at = now() - interval '11 seconds'")
        url = dispatch_server.url
        assert httpx.post(f"{url}/sweep").status_code == 401
        wrong = httpx.post(f"{url}/sweep", headers={SWEEP_TOKEN_HEADER: "wrong"})
        assert wrong.status_code == 401
        swept = httpx.post(f"{url}/sweep", headers={SWEEP_TOKEN_HEADER: PUSH_TOKEN})
        assert swept.status_code == 200 and swept.json() == {"published": 1}
        reply = subscriber.pull(subscription=pull, max_messages=5, timeout=10)
        assert [json.loads(m.message.data) for m in reply.received_messages] == [
            {"sessionUid": "orphan"}
        ]
        subscriber.acknowledge(subscription=pull,
                               ack_ids=[m.ack_id for m in reply.received_messages])  # fmt: skip
    finally:
        subscriber.delete_subscription(subscription=pull)


def test_pushes_sweep_rows_left_behind_at_most_every_few_seconds(
    dispatch_server, broker_env: dict[str, str], db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push publishes committed rows older than SWEEP_AFTER_SECONDS that no one published
    (a gateway that died after its commit), but an instance sweeps at most once per
    SWEEP_EVERY_SECONDS: a sweep after every push was a database transaction per turn."""

    def left_behind(key: str) -> None:
        with db.transaction() as tx:
            enqueue(tx, DISPATCH_TOPIC, {"sessionUid": f"orphan-{key}"}, key=key)
            tx.execute("UPDATE outbox SET created_at = now() - interval '1 minute'")

    def pending() -> list[str]:
        with db.transaction() as tx:
            return [r["key"] for r in tx.all("SELECT key FROM outbox ORDER BY id")]

    def push() -> None:  # a message the dispatch function drops: only its sweep matters
        reply = httpx.post(f"{dispatch_server.url}/", json=_envelope({"sessionUid": "x"}))
        assert reply.status_code == 204, reply.text

    real_clock = push_module._clock
    monkeypatch.setattr(push_module, "_clock", lambda: real_clock() + 3600.0)
    left_behind("a")
    push()
    assert pending() == []  # swept: published, then deleted
    left_behind("b")
    push()
    push()
    assert pending() == ["b"]  # within SWEEP_EVERY_SECONDS of the sweep: not again
    later = real_clock() + 3600.0 + push_module.SWEEP_EVERY_SECONDS + 1
    monkeypatch.setattr(push_module, "_clock", lambda: later)
    push()
    assert pending() == []


def test_a_pushed_dead_letter_fails_the_turn_it_names(
    api: Api, dispatch_server, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Push mode: the dispatch topic's dead-letter subscription pushes to dispatch too. A
    message Pub/Sub dead-lettered carries its original data and signature plus the
    CloudPubSubDeadLetterSource* attributes; dispatch fails the turn it names, once."""
    items = [samples.namespace("acme"), samples.template("acme"), samples.agent("acme")]
    api.ok("POST", "/v1/apply", json={"items": items})
    base = "/v1/ns/acme/agents/bot/sessions"
    api.ok("POST", base, 201, json={"id": "s1"})
    accepted = api.ok("POST", f"{base}/s1/message", 202, json={"content": "stuck"})
    with db.transaction() as tx:
        uid = tx.scalar("SELECT uid::text FROM sessions WHERE id = 's1'")
    monkeypatch.setenv("TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_VERIFICATION", "token")
    monkeypatch.setenv("TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_TOKEN", PUSH_TOKEN)
    entrypoints.reset()
    envelope = _envelope({"sessionUid": uid, "turnId": accepted["turnId"]})
    envelope["message"]["attributes"].update({
        "CloudPubSubDeadLetterSourceSubscription": "talon-dev-session-dispatch-push",
        "CloudPubSubDeadLetterSourceDeliveryCount": "10",
    })  # fmt: skip
    for _ in range(2):  # a redelivered dead letter changes nothing more
        assert httpx.post(f"{dispatch_server.url}/", json=envelope).status_code == 204
    turn = api.ok("GET", f"{base}/s1/turns/{accepted['turnId']}")
    assert turn["state"] == "failed" and turn["error"]["code"] == "dead_lettered"
    events = read_stream(api, f"{base}/s1/stream", last_event_id=0,
                         params={"untilTurnEnd": "true"})  # fmt: skip
    failed = [e["data"] for e in events if e["type"] == "turn.failed"]
    assert failed == [
        {
            "code": "dead_lettered",
            "openTurns": 0,
            "message": "its dispatch event failed 10 deliveries and was dead-lettered",
        }
    ]
