"""Session verbs: `talon get sessions`, `talon send`, `talon stream`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from talon.cli.client import CliError, TalonClient, api_error
from talon.cli.output import dump, table

SESSION_ALIASES = ("session", "sessions")


def sessions_path(namespace: str | None, agent: str | None) -> str:
    if not namespace:
        raise CliError("sessions live in a namespace: pass -n NAMESPACE")
    if not agent:
        raise CliError("sessions belong to an agent: pass --agent AGENT")
    return f"/v1/ns/{namespace}/agents/{agent}/sessions"


def get_sessions(
    client: TalonClient, namespace: str | None, agent: str | None, name: str | None, fmt: str | None
) -> None:
    path = sessions_path(namespace, agent)
    if name:
        view = client.request("GET", f"{path}/{name}")
        print(dump(view, fmt or "yaml"))
        return
    items = list(client.paginate(path))
    if fmt:
        print(dump({"items": items}, fmt))
        return
    rows = [
        [s["id"], s["status"], (s["activeTurn"] or {}).get("state", "-"), s["messageCount"],
         s["updatedAt"]]
        for s in items
    ]  # fmt: skip
    print(table(rows, ["ID", "STATUS", "TURN", "MESSAGES", "UPDATED"]))


def stream_events(
    client: TalonClient, path: str, *, after: int | None, until_turn_end: bool
) -> Iterator[dict[str, Any]]:
    params: dict[str, str] = {}
    if after is not None:
        params["lastEventId"] = str(after)
    if until_turn_end:
        params["untilTurnEnd"] = "true"
    try:
        with client.http.stream("GET", f"{path}/stream", params=params, timeout=None) as reply:
            if not reply.is_success:
                reply.read()
                raise api_error(reply)
            data = None
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data is not None:
                    yield json.loads(data)
                    data = None
    except httpx.TransportError as exc:
        raise CliError(f"the stream from {client.base_url} broke: {exc}") from exc


def describe(event: dict[str, Any]) -> str | None:
    """One line per event worth showing in a terminal."""
    kind, data = event["type"], event["data"]
    if kind == "step.completed":
        extra = f" ({data['provider']})" if data.get("provider") else ""
        return f"  {data['step']:<24} done{extra}"
    if kind == "step.failed":
        return f"  {data['step']:<24} failed"
    if kind == "message.created" and data.get("role") == "assistant":
        return f"\nassistant: {data['content']}"
    if kind in ("turn.started", "turn.completed", "turn.failed", "turn.cancelled"):
        detail = data.get("message") or data.get("reason") or ""
        return f"{kind.replace('.', ' ')}{': ' + detail if detail else ''}"
    return None


def send(
    client: TalonClient,
    namespace: str | None,
    agent: str | None,
    session: str,
    content: str,
    *,
    strategy: str,
    wait: bool,
) -> int:
    path = sessions_path(namespace, agent)
    client.request("POST", path, json={"id": session})  # idempotent: returns an existing one
    accepted = client.request(
        "POST", f"{path}/{session}/message",
        json={"content": content, "multitask_strategy": strategy},
    )  # fmt: skip
    print(f"turn {accepted['turnId']} queued")
    if not wait:
        return 0
    status = 0
    for event in stream_events(
        client, f"{path}/{session}", after=accepted["streamFrom"], until_turn_end=True
    ):
        line = describe(event)
        if line:
            print(line, flush=True)
        if event["type"] in ("turn.failed", "turn.cancelled") and (
            event["turnId"] == accepted["turnId"]
        ):
            status = 1
    return status
