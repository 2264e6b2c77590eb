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
  contract's message statement, sends its two events and then each notified batch as SSE, to
  the turn's `turn.completed`;
- the worker (`python bench/skeleton.py worker`): one connection LISTENs for dispatch rows, a
  pool of threads claims each (the contract's claim and window read in one round trip), keeps
  the session's window, calls the model through Talon's openai adapter (as `bench/floor.py`
  does) and writes the contract's final statement.

What it leaves out is what Talon adds beyond the prescribed path: authentication, validation
of the request, error handling and retries, leases renewed, tools, logs, limits. A turn of
this stack is what any implementation of Talon's contract on these parts spends at least;
`bench/ratio.py --skeleton` measures it beside the floor and Talon.
"""

from __future__ import annotations

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

from pg_contract import CLAIM, FINAL, HISTORY_TURNS, MESSAGE, START_EVENTS, WINDOW, final_events

from talon.runtime.providers.base import ModelRequest
from talon.runtime.providers.openai_chat import OpenAIChatModel
from talon.store import statements
from talon.store.connect import connector_from_url
from talon.store.notify import Listener

DATABASE_URL = "TALON_CONTROL_PLANE_DATABASE_URL"
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


# The gateway. functions-framework imports this module in its server process; the pool and
# the listener start with the first request.

_gateway: tuple[Pool, Listener] | None = None
_gateway_lock = threading.Lock()


def _gateway_parts() -> tuple[Pool, Listener]:
    global _gateway
    with _gateway_lock:
        if _gateway is None:
            listener = Listener(_connector(), ("talon_session_events",))
            listener.wait_ready()
            _gateway = (_pool(), listener)
        return _gateway


def gateway(request: Any) -> Any:
    import flask

    if request.method == "GET":  # /healthz
        return "ok"
    namespace, agent = request.path.split("/")[3], request.path.split("/")[5]
    body = request.get_json()
    pool, listener = _gateway_parts()
    if request.path.endswith("/sessions"):
        pool.run([(
            "INSERT INTO sessions (uid, namespace, id, agent) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING", (uuid.uuid4(), namespace, body["id"], agent))])  # fmt: skip
        return flask.jsonify({"id": body["id"], "agent": agent, "ns": namespace,
                              "status": "idle"})  # fmt: skip
    session = request.path.split("/")[7]
    turn = uuid.uuid4()
    inbox = listener.subscribe("talon_session_events", f"{namespace}/{session}")
    try:
        [posted] = pool.run([(MESSAGE, (namespace, session, agent, turn, f"key-{turn}",
                                        turn.bytes, body["content"]))])  # fmt: skip
    except BaseException:
        inbox.close()
        raise
    stream_from = posted.rows[0][1] - 2

    def events() -> Iterator[str]:
        # The message's own events, then each notified batch ("<session uid> <events>").
        with inbox:
            batches = [posted.rows[0][3]]
            while True:
                for batch in batches:
                    assert batch is not None, "the skeleton does not re-read missed events"
                    for event in json.loads(batch):
                        yield (f"id: {event['id']}\nevent: {event['type']}\n"
                               f"data: {json.dumps(event)}\n\n")  # fmt: skip
                        if event["type"] == "turn.completed" and event["turnId"] == str(turn):
                            return
                items = inbox.get(60)
                if not items:
                    raise TimeoutError(f"turn {turn}: no events for 60 s")
                batches = [item and item.partition(" ")[2] for item in items]

    headers = {"Talon-Turn-Id": str(turn), "Talon-Stream-From": str(stream_from)}
    return flask.Response(events(), 202, headers, mimetype="text/event-stream")


# The worker.


class Worker:
    def __init__(self, concurrency: int) -> None:
        self.pool = _pool()
        self.model = OpenAIChatModel(profile="zero", model="zero-latency", api_key="none",
                                     base_url=os.environ[MODEL_URL], temperature=None,
                                     max_tokens=None)  # fmt: skip
        self.threads = ThreadPoolExecutor(concurrency)
        # Each session's window as the worker keeps it: (seq, role, content) of its messages.
        self.windows: dict[str, list[tuple[int, str, str]]] = {}
        self.listener = Listener(_connector(), ("talon_outbox",))
        self.deliveries = self.listener.subscribe("talon_outbox", "dispatch")

    def serve(self) -> None:
        self.listener.wait_ready()
        while True:
            for item in self.deliveries.get(60):
                if item is not None:
                    delivery, _, payload = item.partition(" ")
                    self.threads.submit(self.run, int(delivery), json.loads(payload))

    def run(self, delivery: int, payload: dict[str, str]) -> None:
        session = uuid.UUID(payload["sessionUid"])
        window = self.windows.setdefault(payload["sessionUid"], [])
        last = window[-1][0] if window else 0
        claimed, read = self.pool.run([
            (CLAIM, (session, WORKER, delivery, START_EVENTS)),
            (WINDOW, (session, WORKER, last)),
        ])  # fmt: skip
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
        self.pool.run([(FINAL, (session, payload["turnId"], fencing, answer.content,
                                answer.provider, output, final_events(answer.content),
                                delivery))])  # fmt: skip
        # The answer joins the window at the next read (it is after `last`).


def main() -> int:
    if sys.argv[1:2] != ["worker"]:
        raise SystemExit("usage: skeleton.py worker [concurrency]")
    Worker(int(sys.argv[2]) if len(sys.argv) > 2 else 16).serve()
    return 0


if __name__ == "__main__":
    assert HISTORY_TURNS  # the window's length is the contract's, in WINDOW
    sys.exit(main())
