"""A gateway that does nothing: the HTTP floor under `bench/floor.py`.

POST answers 202 at once; GET .../stream sends the events a one-step turn streams (the same
types and sizes as Talon's), then ends. No database, no auth, no Talon code.
"""

import json
import uuid

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


@functions_framework.http
def floor(request: flask.Request) -> flask.Response:
    if request.method == "POST":
        request.get_json(silent=True)
        turn = str(uuid.uuid4())
        return flask.jsonify({"turnId": turn, "streamFrom": turn}), 202
    turn = request.args.get("lastEventId", "")

    def stream():  # type: ignore[no-untyped-def]
        for number, (kind, data) in enumerate(EVENTS, start=1):
            body = {"id": number, "type": kind, "turnId": turn, "createdAt": "", **data}
            yield f"id: {number}\nevent: {kind}\ndata: {json.dumps(body)}\n\n"

    return flask.Response(stream(), mimetype="text/event-stream")
