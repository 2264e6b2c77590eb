"""`talon get sessions --watch`: the table, then a line for every session that changes, until
Ctrl-C (which ends it cleanly, exit 0).

One session is followed through its event stream (a line when a turn event or a message
changes its row); an agent's sessions are polled, since the API has no stream of sessions."""

from __future__ import annotations

import time
from typing import Any

from talon.cli.output import table
from talon.cli.sessions import SESSION_HEADERS, session_row
from talon.client import Client

POLL_SECONDS = 1.0
_CHANGES = ("turn.", "message.created")


def _line(row: list[Any]) -> str:
    return table([row], SESSION_HEADERS).splitlines()[1]


def watch_session(client: Client, namespace: str, agent: str, session_id: str) -> int:
    session = client.get_session(namespace, agent, session_id)
    shown = session_row(session)
    print(table([shown], SESSION_HEADERS), flush=True)
    try:
        events = client.stream(namespace, agent, session_id, after=session.last_event_id)
        for event in events:
            if not event.type.startswith(_CHANGES):
                continue
            row = session_row(client.get_session(namespace, agent, session_id))
            if row != shown:
                print(_line(row), flush=True)
                shown = row
    except KeyboardInterrupt:
        return 0
    return 0


def watch_sessions(client: Client, scopes: list[tuple[str, str]]) -> int:
    def snapshot() -> dict[tuple[str, str], list[Any]]:
        return {(ns, s.id): session_row(s) for ns, agent in scopes
                for s in client.sessions(ns, agent)}  # fmt: skip

    shown = snapshot()
    print(table(list(shown.values()), SESSION_HEADERS), flush=True)
    try:
        while True:
            time.sleep(POLL_SECONDS)
            now = snapshot()
            for key, row in now.items():
                if shown.get(key) != row:
                    print(_line(row), flush=True)
            for key in shown.keys() - now.keys():
                print(f"{key[1]}   deleted", flush=True)
            shown = now
    except KeyboardInterrupt:
        return 0
