"""`talon get`, `talon delete` and `talon describe`: resources by kind and name, across
namespaces with -A, printed as a table, names, YAML, JSON or a JSONPath template."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from talon.cli.client import CliError, plain
from talon.cli.describe import describe
from talon.cli.manifest_files import read_documents
from talon.cli.output import is_full, render, resource_table, table
from talon.cli.sessions import SESSION_ALIASES, SESSION_HEADERS, session_row, session_scope
from talon.cli.turns import TURN_ALIASES, get_turns
from talon.cli.watch import watch_session, watch_sessions
from talon.client import Client, Session
from talon.resources.registry import BY_NAME, KINDS, Kind, kind_for_alias

API_VERSION = "talon.dev/v1alpha1"


def kind_of(alias: str) -> Kind:
    kind = kind_for_alias(alias) or BY_NAME.get(alias)
    if kind is None:
        known = ", ".join(["sessions", "turns", *(k.plural for k in KINDS)])
        raise CliError(f"unknown kind {alias!r}; known kinds: {known}")
    return kind


def _scope(kind: Kind, namespace: str | None) -> str | None:
    if not kind.namespaced:
        return None
    if not namespace:
        raise CliError(f"{kind.plural} live in a namespace: pass -n NAMESPACE (or -A)")
    return namespace


def _namespaces(client: Client, args: argparse.Namespace) -> list[str]:
    if args.all_namespaces:
        return [ns.name for ns in client.list("namespaces")]
    return [args.namespace] if args.namespace else []


def cmd_get(client: Client, args: argparse.Namespace) -> int:
    if args.kind in TURN_ALIASES:
        return get_turns(client, args)
    if args.kind in SESSION_ALIASES:
        return _get_sessions(client, args)
    if args.watch:
        raise CliError("--watch follows sessions and turns only")
    kind = kind_of(args.kind)
    fmt = args.output
    if args.name:
        item = plain(client.get(kind.plural, args.name, namespace=_scope(kind, args.namespace)))
        _print_items(kind, [item], fmt, single=True, namespaces=False)
        return 0
    if kind.namespaced and args.all_namespaces:
        selector = args.selector
        items = [plain(i) for ns in _namespaces(client, args)
                 for i in client.list(kind.plural, namespace=ns, selector=selector)]  # fmt: skip
    else:
        found = client.list(kind.plural, namespace=_scope(kind, args.namespace),
                            selector=args.selector)  # fmt: skip
        items = [plain(i) for i in found]
    if not items and not is_full(fmt):
        where = f" in namespace {args.namespace}" if kind.namespaced and args.namespace else ""
        print(f"No {kind.plural} found{where}.", file=sys.stderr)
        return 0
    _print_items(kind, items, fmt, single=False, namespaces=bool(args.all_namespaces))
    return 0


def _print_items(
    kind: Kind, items: list[dict[str, Any]], fmt: str | None, *, single: bool, namespaces: bool
) -> None:
    if fmt == "name":
        for item in items:
            print(f"{kind.name.lower()}/{item['metadata']['name']}")
    elif fmt is not None and is_full(fmt):
        value = items[0] if single else {"apiVersion": API_VERSION, "kind": f"{kind.name}List",
                                         "items": items}  # fmt: skip
        print(render(value, fmt))
    else:
        print(resource_table(kind.name, items, wide=fmt == "wide", namespaces=namespaces))


def _get_sessions(client: Client, args: argparse.Namespace) -> int:
    fmt = args.output
    if args.all_namespaces:
        scopes = [(ns, a.name) for ns in _namespaces(client, args)
                  for a in client.list("agents", namespace=ns)
                  if args.agent in (None, a.name)]  # fmt: skip
    else:
        scopes = [session_scope(args.namespace, args.agent)]
    if args.watch:
        if args.name:
            return watch_session(client, *scopes[0], args.name)
        return watch_sessions(client, scopes)
    if args.name:
        sessions = [client.get_session(*scopes[0], args.name)]
        fmt = fmt or "yaml"  # one session: its whole view (messages, the latest steps)
    else:
        sessions = [s for ns, agent in scopes for s in client.sessions(ns, agent)]
    if fmt == "name":
        for session in sessions:
            print(f"session/{session.id}")
    elif fmt is not None and is_full(fmt):
        value = plain(sessions[0]) if args.name else {"items": [plain(s) for s in sessions]}
        print(render(value, fmt))
    else:
        print(sessions_table(sessions, all_namespaces=bool(args.all_namespaces),
                             wide=fmt == "wide"))  # fmt: skip
    return 0


def sessions_table(sessions: list[Session], *, all_namespaces: bool, wide: bool) -> str:
    headers = list(SESSION_HEADERS)
    rows = [session_row(s) for s in sessions]
    if wide:
        headers += ["LAST EVENT", "ACTIVE TURN"]
        rows = [[*r, s.last_event_id, (s.active_turn or {}).get("id", "-")]
                for r, s in zip(rows, sessions, strict=True)]  # fmt: skip
    if all_namespaces:
        headers = ["NAMESPACE", "AGENT", *headers]
        rows = [[s.ns, s.agent, *r] for r, s in zip(rows, sessions, strict=True)]
    return table(rows, headers)


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    if args.filename:
        if args.kind or args.name:
            raise CliError("give either KIND NAME or -f FILE, not both")
        return _delete_files(client, args.filename, args.ignore_not_found)
    if not args.kind or not args.name:
        raise CliError("delete needs KIND NAME or -f FILE|DIR")
    if args.kind in SESSION_ALIASES:
        client.delete_session(*session_scope(args.namespace, args.agent), args.name)
        print(f"session/{args.name} deleted")
        return 0
    kind = kind_of(args.kind)
    client.delete(kind.plural, args.name, namespace=_scope(kind, args.namespace))
    print(f"{kind.name.lower()}/{args.name} deleted")
    return 0


def _delete_files(client: Client, filenames: list[str], ignore_not_found: bool) -> int:
    """The objects the manifests name, in the reverse of apply's dependency order (schedules
    and agents before their templates and servers, namespaces last) whatever their order in
    the files, so nothing is refused for being in use by what is deleted later."""
    from talon.client import NotFound

    rank = {kind.name: index for index, kind in enumerate(KINDS)}
    documents = list(reversed(read_documents(filenames)))
    documents.sort(key=lambda d: -rank.get(str(_kind_name(d.body)), len(rank)))
    for document in documents:
        body: dict[str, Any] = document.body if isinstance(document.body, dict) else {}
        metadata: dict[str, Any] = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            metadata = {}
        if not body.get("kind") or not metadata.get("name"):
            raise CliError(f"{document.source}: a manifest needs kind and metadata.name")
        kind = kind_of(str(body["kind"]))
        namespace = metadata.get("namespace") if kind.namespaced else None
        title = f"{kind.name.lower()}/{metadata['name']}" + (f" -n {namespace}" if namespace
                                                              else "")  # fmt: skip
        try:
            client.delete(kind.plural, str(metadata["name"]), namespace=_scope(kind, namespace))
        except NotFound:
            if not ignore_not_found:
                raise
            print(f"{title} not found")
            continue
        print(f"{title} deleted")
    return 0


def _kind_name(body: Any) -> str | None:
    kind = body.get("kind") if isinstance(body, dict) else None
    found = kind_for_alias(str(kind)) or BY_NAME.get(str(kind)) if kind else None
    return found.name if found else None


def cmd_describe(client: Client, args: argparse.Namespace) -> int:
    if args.kind in SESSION_ALIASES:
        plural, namespaced = "sessions", True
    else:
        kind = kind_of(args.kind)
        plural, namespaced = kind.plural, kind.namespaced
    print(describe(client, plural, namespaced, args.namespace, args.name, args.agent))
    return 0
