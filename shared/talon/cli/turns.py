"""`talon get turns --session S` (and `get turn ID`): a session's turns and their states.

The API has no list of a session's turns; their states are read from the session's event log
(`turn.queued`, `turn.started`, `turn.completed`, ...), replayed from the start, which is also
what `--watch` follows. One turn with its steps comes from `GET .../turns/{id}`."""

from __future__ import annotations

import argparse
from typing import Any

from talon.cli.client import CliError, plain
from talon.cli.output import is_full, render, table
from talon.cli.sessions import session_scope
from talon.client import Client, Event

TURN_ALIASES = ("turn", "turns")
TURN_HEADERS = ["TURN", "STATE", "ATTEMPT", "DETAIL", "EVENT"]
_STATES = {
    "turn.queued": "queued",
    "turn.started": "running",
    "turn.completed": "completed",
    "turn.failed": "failed",
    "turn.cancelled": "cancelled",
}


class TurnStates:
    """Each turn's latest state, from the events seen so far."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {}

    def see(self, event: Event) -> list[Any] | None:
        """The turn's new row if the event changed its state, else None."""
        state = _STATES.get(event.type)
        if state is None or event.turn_id is None:
            return None
        previous = self.rows.get(event.turn_id)
        attempt = event.data.get("attempt", previous[2] if previous else "-")
        detail = event.data.get("message") or event.data.get("reason") or ""
        row = [event.turn_id, state, attempt, detail, event.id]
        self.rows[event.turn_id] = row
        return row


def get_turns(client: Client, args: argparse.Namespace) -> int:
    ns, agent = session_scope(args.namespace, args.agent)
    session_id = args.session
    if not session_id:
        raise CliError("turns belong to a session: pass --session SESSION")
    if args.name and not args.watch:
        turn = client.turn(ns, agent, session_id, args.name)
        if is_full(args.output):
            print(render(plain(turn), args.output or "yaml"))
        else:
            extra = turn.model_extra or {}
            rows = [[s.get("name") or s.get("step"), s.get("state"), s.get("error") or ""]
                    for s in turn.steps]  # fmt: skip
            print(table([[turn.id, turn.state, extra.get("attempts", ""), extra.get("provider")
                          or "", extra.get("error") or ""]],
                        ["TURN", "STATE", "ATTEMPTS", "PROVIDER", "ERROR"]))  # fmt: skip
            if rows:
                print("\n" + table(rows, ["STEP", "STATE", "ERROR"]))
        return 0
    last = client.get_session(ns, agent, session_id).last_event_id
    states = TurnStates()
    if last > 0:
        replay = client.stream(ns, agent, session_id, after=0)
        for event in replay:
            states.see(event)
            if event.id >= last:
                break
        replay.close()
    rows = [r for r in states.rows.values() if args.name in (None, r[0])]
    if args.output == "name":
        print("\n".join(f"turn/{r[0]}" for r in rows))
    elif is_full(args.output):
        items = [dict(zip(("id", "state", "attempt", "detail", "eventId"), r, strict=True))
                 for r in rows]  # fmt: skip
        print(render({"items": items}, args.output or "yaml"))
    else:
        print(table(rows, TURN_HEADERS))
    if not args.watch:
        return 0
    try:
        for event in client.stream(ns, agent, session_id, after=last):
            row = states.see(event)
            if row is not None and args.name in (None, row[0]):
                print(table([row], TURN_HEADERS).splitlines()[1], flush=True)
    except KeyboardInterrupt:
        return 0
    return 0
