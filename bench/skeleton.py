"""The skeleton of a Talon turn: the prescribed parts in Talon's process layout, joined by the
contract's statements and the least glue found, with no Talon code above the driver's.

`bench/floor.py` prices the parts a turn cannot avoid (the clients, functions-framework, the
openai exchange) with nothing between them, and `bench/pg_contract.py` prices the contract's
statements with nothing around them. A Talon turn also crosses processes: the gateway posts
the message and follows the session's notifications for its events, a separate worker is woken
by the dispatch row's notification, claims the turn, calls the model and writes the answer. This
module is that path and nothing else, run by `bench/turns.py --stack skeleton` exactly as Talon
is run (the same clients, model server, durable PostgreSQL and accounting):

- the gateway (a functions-framework function, `--target gateway`): a session's create inserts
  its row; a message posted for its events subscribes to the session's notifications, runs the
  contract's message statement, sends its two events and then each notified batch as SSE (a
  write each; its own message's notification, which arrives too, is not sent again), to the
  turn's `turn.completed`;
- the worker (`python bench/skeleton.py worker`): one connection LISTENs for dispatch rows,
  handed from its thread to a pool of threads that claims each (the contract's claim and
  window read in one round trip), keeps the session's window, calls the model through
  Talon's openai adapter (as `bench/floor.py` does) and writes the contract's final statement;
- deployed (`bench/turns.py --broker pubsub`): the gateway publishes each dispatch row to the
  Pub/Sub emulator in the background (the API's call, as Talon does) and deletes the published
  rows 64 at a time, and the emulator pushes each message to the dispatch function
  (`--target dispatch`), which runs the turn as the worker does with the contract's deployed
  statements (the row neither claimed nor removed); only the gateway listens.

What it leaves out is what Talon adds beyond the prescribed path: authentication, validation
of the request, error handling and retries, leases renewed, tools, logs, limits, the
Idempotency-Key's replay, re-reading missed notifications. A turn of this stack is the least
found that an implementation of Talon's contract on these parts spends; `bench/ratio.py`
measures it beside the floor and Talon (`--no-skeleton` skips it).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_contract import (
    CLAIM,
    CLAIM_PUSHED,
    FINAL,
    FINAL_PUSHED,
    MESSAGE,
    START_EVENTS,
    WINDOW,
    final_events,
)
from pg_floor import PUBLISHED

from talon.runtime.providers.base import ModelRequest
from talon.runtime.providers.openai_chat import OpenAIChatModel
from talon.store import statements
from talon.store.connect import connector_from_url
from talon.store.notify import Listener

DATABASE_URL = "TALON_CONTROL_PLANE_DATABASE_URL"
# Deployed (`bench/turns.py --broker pubsub`): the Pub/Sub project and dispatch topic, as
# `bench/pubsub_stack.broker_env` names them for Talon.
PROJECT = "TALON_CONTROL_PLANE_MESSAGE_BROKER_PROJECT"
DISPATCH_TOPIC = "TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_TOPIC"
MODEL_URL = "SKELETON_MODEL_URL"
POOL_SIZE = "SKELETON_POOL_SIZE"
WORKER = "skeleton-worker"


class Pool:
    """Connections taken a round trip at a time, opened as needed up to `size`."""

    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self._connect = connect
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._opened = 0
        self._size = size
        self._lock = threading.Lock()

    def run(self, batch: list[tuple[str, Any]]) -> list[statements.Result]:
        connection = self._take()
        try:
            return statements.run_batch(connection, batch, commit=True)
        finally:
            self._idle.put(connection)

    def _take(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                if self._opened < self._size:
                    self._opened += 1
                    return self._connect()
            return self._idle.get()


def _connector() -> Callable[[], Any]:
    return connector_from_url(os.environ[DATABASE_URL], 10)


def _pool() -> Pool:
    return Pool(_connector(), int(os.environ.get(POOL_SIZE, "2")))


# The gateway. functions-framework imports this module in its server process; its parts start
# with the first request.


class Publisher:
    """Deployed: each dispatch row published on its own by the API's call (as Talon's
    `broker/pubsub.py` does), in the background; the published rows deleted 64 at a time."""

    def __init__(self, pool: Pool) -> None:
        # Imported here: the local stack needs no Google client.
        import google.cloud.pubsub_v1 as pubsub_v1
        from google.pubsub_v1 import PublisherClient, PubsubMessage

        self._publish = PublisherClient.publish
        self._message = PubsubMessage
        self._client = pubsub_v1.PublisherClient()
        self._topic = self._client.topic_path(os.environ[PROJECT], os.environ[DISPATCH_TOPIC])
        self._threads = ThreadPoolExecutor(16)
        self._pool = pool
        self._published: list[int] = []
        self._lock = threading.Lock()

    def submit(self, row_id: int, payload: dict[str, str]) -> None:
        self._threads.submit(self._send, row_id, payload)

    def _send(self, row_id: int, payload: dict[str, str]) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        message = self._message(data=data, attributes={"outboxId": str(row_id)})
        self._publish(self._client, topic=self._topic, messages=[message], timeout=30)
        with self._lock:
            self._published.append(row_id)
            done = self._published[:] if len(self._published) >= 64 else None
            if done:
                self._published.clear()
        if done:
            self._pool.run([(PUBLISHED, (done,))])


class Gateway:
    def __init__(self) -> None:
        self.pool = _pool()
        self.listener = Listener(_connector(), ("talon_session_events",))
        self.listener.wait_ready()
        self.publisher = Publisher(self.pool) if os.environ.get(DISPATCH_TOPIC) else None
        self.sessions: dict[tuple[str, str], uuid.UUID] = {}  # (namespace, id): uid


_gateway: Gateway | None = None
_parts_lock = threading.Lock()


def _gateway_parts() -> Gateway:
    global _gateway
    with _parts_lock:
        if _gateway is None:
            _gateway = Gateway()
        return _gateway


def gateway(request: Any) -> Any:
    import flask

    if request.method == "GET":  # /healthz
        return "ok"
    namespace, agent = request.path.split("/")[3], request.path.split("/")[5]
    body = request.get_json()
    parts = _gateway_parts()
    if request.path.endswith("/sessions"):
        [found] = parts.pool.run([(
            "WITH n AS (INSERT INTO sessions (uid, namespace, id, agent) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING uid) "
            "SELECT uid FROM n UNION ALL SELECT uid FROM sessions WHERE namespace = $2 "
            "AND id = $3", (uuid.uuid4(), namespace, body["id"], agent))])  # fmt: skip
        parts.sessions[(namespace, body["id"])] = found.rows[0][0]
        return flask.jsonify({"id": body["id"], "agent": agent, "ns": namespace,
                              "status": "idle"})  # fmt: skip
    session = request.path.split("/")[7]
    turn = uuid.uuid4()
    inbox = parts.listener.subscribe("talon_session_events", f"{namespace}/{session}")
    try:
        [posted] = parts.pool.run([(MESSAGE, (namespace, session, agent, turn, f"key-{turn}",
                                              turn.bytes, body["content"]))])  # fmt: skip
    except BaseException:
        inbox.close()
        raise
    _, last_event_id, row_id, first_events = posted.rows[0][:4]
    if parts.publisher is not None:
        uid = parts.sessions[(namespace, session)]
        parts.publisher.submit(row_id, {"sessionUid": str(uid), "turnId": str(turn)})

    def events() -> Iterator[str]:
        # The message's own events, then each notified batch ("<session uid> <events>"), a
        # write each; the message's own batch, notified too, is not sent again.
        with inbox:
            first = json.loads(first_events)
            last = first[-1]["id"]
            yield "".join(_frame(event) for event in first)
            mine = str(turn)
            while True:
                items = inbox.get(60)
                if not items:
                    raise TimeoutError(f"turn {turn}: no events for 60 s")
                frames, done = [], False
                for item in items:
                    assert item is not None, "the skeleton does not re-read missed events"
                    for event in json.loads(item.partition(" ")[2]):
                        if event["id"] <= last:
                            continue
                        last = event["id"]
                        frames.append(_frame(event))
                        done = done or (event["type"] == "turn.completed"
                                        and event["turnId"] == mine)  # fmt: skip
                if frames:
                    yield "".join(frames)
                if done:
                    return

    headers = {"Talon-Turn-Id": str(turn), "Talon-Stream-From": str(last_event_id - 2)}
    return flask.Response(events(), 202, headers, mimetype="text/event-stream")


def _frame(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"


# The worker: locally a process of its own (`main`), deployed the dispatch function that
# Pub/Sub pushes to (`dispatch`).


class Worker:
    def __init__(self, concurrency: int) -> None:
        self.pool = _pool()
        self.model = OpenAIChatModel(profile="zero", model="zero-latency", api_key="none",
                                     base_url=os.environ[MODEL_URL], temperature=None,
                                     max_tokens=None)  # fmt: skip
        self.threads = ThreadPoolExecutor(concurrency)
        # Each session's window as the worker keeps it: (seq, role, content) of its messages.
        self.windows: dict[str, list[tuple[int, str, str]]] = {}

    def serve(self) -> None:
        listener = Listener(_connector(), ("talon_outbox",))
        listener.watch("talon_outbox", self._dispatch)
        listener.wait_ready()
        threading.Event().wait()

    def _dispatch(self, notified: str | None) -> None:
        # On the listener's thread: each dispatch row straight to the pool of threads.
        topic, _, rest = (notified or "").partition(" ")
        if topic == "dispatch":
            delivery, _, payload = rest.partition(" ")
            self.threads.submit(self.run, json.loads(payload), int(delivery))

    def run(self, payload: dict[str, str], delivery: int | None = None) -> None:
        """The turn `payload` names; `delivery`: the dispatch row to claim and remove with it
        (locally), or None (deployed: Pub/Sub delivered it)."""
        session = uuid.UUID(payload["sessionUid"])
        window = self.windows.setdefault(payload["sessionUid"], [])
        last = window[-1][0] if window else 0
        claiming = (
            (CLAIM, (session, WORKER, delivery, START_EVENTS))
            if delivery is not None
            else (CLAIM_PUSHED, (session, WORKER, START_EVENTS))
        )
        claimed, read = self.pool.run([claiming, (WINDOW, (session, WORKER, last))])
        if not claimed.rows or not claimed.rows[0][2]:
            return  # another worker's, or not startable: not on the skeleton's path
        fencing = claimed.rows[0][0]
        lo, added = read.rows[0]
        window += [tuple(m) for m in json.loads(added)]
        del window[: next((i for i, m in enumerate(window) if m[0] >= lo), len(window))]
        messages = [{"role": "system", "content": "Answer."}]
        messages += [{"role": role, "content": content} for _, role, content in window]
        answer = self.model.complete(ModelRequest(messages, [], 30.0, lambda text: None))
        output = json.dumps({"content": answer.content, "provider": answer.provider,
                             "usage": answer.usage})  # fmt: skip
        params = (session, payload["turnId"], fencing, answer.content, answer.provider, output,
                  final_events(answer.content))  # fmt: skip
        if delivery is None:
            self.pool.run([(FINAL_PUSHED, params)])
        else:
            self.pool.run([(FINAL, (*params, delivery))])
        # The answer joins the window at the next read (it is after `last`).


_dispatcher: Worker | None = None


def dispatch(request: Any) -> Any:
    """Deployed: a Pub/Sub push of one dispatch message, answered once its turn is done."""
    global _dispatcher
    with _parts_lock:
        if _dispatcher is None:
            _dispatcher = Worker(1)
    message = request.get_json()["message"]
    _dispatcher.run(json.loads(base64.b64decode(message["data"])))
    return "", 204


def main() -> int:
    if sys.argv[1:2] != ["worker"]:
        raise SystemExit("usage: skeleton.py worker [concurrency]")
    Worker(int(sys.argv[2]) if len(sys.argv) > 2 else 16).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
