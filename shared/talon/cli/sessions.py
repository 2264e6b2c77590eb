"""Session verbs: `talon get sessions`, `talon send`, `talon stream`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from talon.cli.client import CliError, plain
from talon.cli.output import dump, table
from talon.client import Client, Session, StreamEnded

SESSION_ALIASES = ("session", "sessions")


def session_scope(namespace: str | None, agent: str | None) -> tuple[str, str]:
    if not namespace:
        raise CliError("sessions live in a namespace: pass -n NAMESPACE")
    if not agent:
        raise CliError("sessions belong to an agent: pass --agent AGENT")
    return namespace, agent


SESSION_HEADERS = ["ID", "STATUS", "TURN", "QUEUED", "MESSAGES", "UPDATED"]


def session_row(session: Session) -> list[Any]:
    turn = (session.active_turn or {}).get("state", "-")
    updated = (session.model_extra or {}).get("updatedAt", "")
    return [session.id, session.status, turn, session.queued_turns, session.message_count,
            updated]  # fmt: skip


def get_sessions(
    client: Client, namespace: str | None, agent: str | None, name: str | None, fmt: str | None
) -> None:
    ns, agent_name = session_scope(namespace, agent)
    if name:
        print(dump(plain(client.get_session(ns, agent_name, name)), fmt or "yaml"))
        return
    items = list(client.sessions(ns, agent_name))
    if fmt:
        print(dump({"items": [plain(s) for s in items]}, fmt))
        return
    print(table([session_row(s) for s in items], SESSION_HEADERS))


def stream_events(
    client: Client,
    namespace: str,
    agent: str,
    session: str,
    *,
    after: int | None,
    until_turn_end: bool,
) -> Iterator[dict[str, Any]]:
    """The session's events as the API shows them, through the SDK's stream: resumed after
    the last event across dropped connections and the gateway's `maxSeconds` ends."""
    try:
        for event in client.stream(namespace, agent, session, after=after,
                                   until_turn_end=until_turn_end):  # fmt: skip
            yield event.model_dump(by_alias=True)
    except StreamEnded as exc:
        raise CliError(f"the stream ended: {exc} ({exc.reason})") from exc


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
        # One line per source the turn goes on without (a server it cannot reach, a secret
        # that is not set), naming it and why.
        return "\n".join(f"  tools unavailable: {s.get('source')}: {s.get('error')}"
                         for s in data.get("sources", []))  # fmt: skip
    if kind == "message.created" and data.get("role") == "assistant":
        return f"\nassistant: {data['content']}"
    if kind in ("turn.started", "turn.completed", "turn.failed", "turn.cancelled"):
        detail = data.get("message") or data.get("reason") or ""
        return f"{kind.replace('.', ' ')}{': ' + detail if detail else ''}"
    return None


def send(
    client: Client,
    namespace: str | None,
    agent: str | None,
    session: str,
    content: str,
    *,
    strategy: str,
    wait: bool,
) -> int:
    ns, agent_name = session_scope(namespace, agent)
    client.create_session(ns, agent_name, session)  # idempotent: returns an existing one
    if not wait:
        accepted = client.send(ns, agent_name, session, content, strategy=strategy)
        print(f"turn {accepted.turn_id} queued")
        return 0
    # One request: the message, answered with its turn's events to the turn's end.
    events = client.send_and_stream(ns, agent_name, session, content, strategy=strategy)
    printer = EventPrinter()
    announced = False
    try:
        for event in events:
            if not announced:
                print(f"turn {events.turn_id} queued")
                announced = True
            if event.turn_id == events.turn_id:
                printer.show(event.model_dump(by_alias=True))
    except StreamEnded as exc:
        raise CliError(f"the stream ended: {exc} ({exc.reason})") from exc
    return 1 if printer.failed else 0
