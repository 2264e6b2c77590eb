"""Session verbs: `talon get sessions`, `talon send`, `talon stream`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from talon.cli.client import CliError, TalonClient
from talon.cli.output import dump, table
from talon.client import APIError, Client, StreamEnded, TalonConnectionError

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
    client: TalonClient,
    namespace: str,
    agent: str,
    session: str,
    *,
    after: int | None,
    until_turn_end: bool,
) -> Iterator[dict[str, Any]]:
    """The session's events as the API shows them, through the SDK's stream: resumed after
    the last event across dropped connections and the gateway's `maxSeconds` ends."""
    with Client(client.base_url, client.token, transport=client.transport) as sdk:
        try:
            for event in sdk.stream(namespace, agent, session, after=after,
                                    until_turn_end=until_turn_end):  # fmt: skip
                yield event.model_dump(by_alias=True)
        except StreamEnded as exc:
            raise CliError(f"the stream ended: {exc} ({exc.reason})") from exc
        except APIError as exc:
            raise CliError(str(exc)) from exc
        except TalonConnectionError as exc:
            raise CliError(f"the stream from {client.base_url} broke: {exc}") from exc


class EventPrinter:
    """One terminal line per event worth showing; the answer as it streams."""

    def __init__(self) -> None:
        self._streamed: set[str | None] = set()  # turns whose answer was printed as deltas
        self._mid_line = False
        self.failed = False

    def show(self, event: dict[str, Any]) -> None:
        kind, data = event["type"], event["data"]
        if kind == "message.delta":
            if data.get("reset"):
                print("\n[the answer restarts]", flush=True)
            elif event.get("turnId") not in self._streamed:
                print("\nassistant: ", end="")
            self._streamed.add(event.get("turnId"))
            print(data.get("text", ""), end="", flush=True)
            self._mid_line = True
            return
        if kind == "message.created" and event.get("turnId") in self._streamed:
            return  # already printed as it streamed
        line = describe(event)
        if line is None:
            return
        if self._mid_line:
            print()
            self._mid_line = False
        print(line, flush=True)
        if kind in ("turn.failed", "turn.cancelled"):
            self.failed = True


def describe(event: dict[str, Any]) -> str | None:
    """One line per event worth showing in a terminal."""
    kind, data = event["type"], event["data"]
    if kind == "step.completed":
        if data.get("isError"):
            return f"  {data['step']:<24} failed: {data.get('error', '')}"
        extra = f" ({data['provider']})" if data.get("provider") else ""
        return f"  {data['step']:<24} done{extra}"
    if kind == "step.failed":
        return f"  {data['step']:<24} failed"
    if kind == "tools.unavailable":
        sources = "; ".join(f"{s.get('source')}: {s.get('error')}" for s in data.get("sources", []))
        return f"  tools unavailable: {sources}"
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
    printer = EventPrinter()
    for event in stream_events(client, namespace or "", agent or "", session,
                               after=accepted["streamFrom"], until_turn_end=True):  # fmt: skip
        if event.get("turnId") == accepted["turnId"]:
            printer.show(event)
    return 1 if printer.failed else 0
