"""A gateway that does nothing: the HTTP floor under `bench/floor.py`.

POST answers 202 at once; GET .../stream sends the events a one-step turn streams (the same
types and sizes as Talon's), then ends; a POST asking for `text/event-stream` answers with
those events itself. No database, no auth, no Talon code.
"""

import itertools
import json

import flask
import functions_framework

EVENTS = [
    ("turn.started", {"attempt": 1, "resumed": False}),
    ("step.started", {"step": "load-knowledge", "index": 0, "kind": "knowledge"}),
    (
        "step.completed",
        {"step": "load-knowledge", "index": 0, "kind": "knowledge", "documents": []},
    ),
    ("step.started", {"step": "call-model", "index": 1, "kind": "model"}),
    (
        "step.completed",
        {
            "step": "call-model",
            "index": 1,
            "kind": "model",
            "provider": "zero/openai:zero-latency",
            "toolCalls": [],
        },
    ),
    ("step.started", {"step": "write-next-message", "index": 2, "kind": "write"}),
    ("message.created", {"seq": 2, "role": "assistant", "content": "ok"}),
    ("step.completed", {"step": "write-next-message", "index": 2, "kind": "write"}),
    ("turn.completed", {"provider": "zero/openai:zero-latency", "openTurns": 0}),
]


_turns = itertools.count(1)


@functions_framework.http
def floor(request: flask.Request) -> flask.Response:
    """Answers as Talon does, in the shapes the SDK validates: a session for the create, an
    accepted message (a turn and the event id its stream starts after), and a stream whose
    events carry the turn named by that id."""
    if request.method == "POST":
        request.get_json(silent=True)
        if request.path.endswith("/sessions"):
            return flask.jsonify({"id": "s", "agent": "bot", "ns": "bench", "status": "idle"})
        number = next(_turns) * 100
        if request.accept_mimetypes.best == "text/event-stream":  # posted for its events
            headers = {"Talon-Turn-Id": f"t{number}", "Talon-Stream-From": str(number)}
            return _events(number, 202, headers)
        return flask.jsonify({"turnId": f"t{number}", "streamFrom": number}), 202
    return _events(int(request.headers.get("Last-Event-ID") or 0), 200, {})


def _events(after: int, status: int, headers: dict[str, str]) -> flask.Response:
    turn = f"t{after}"

    def stream():  # type: ignore[no-untyped-def]
        for number, (kind, data) in enumerate(EVENTS, start=after + 1):
            body = {"id": number, "type": kind, "turnId": turn, "data": data, "createdAt": ""}
            yield f"id: {number}\nevent: {kind}\ndata: {json.dumps(body)}\n\n"

    return flask.Response(stream(), status, headers, mimetype="text/event-stream")
