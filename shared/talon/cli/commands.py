"""The commands beyond get, describe and delete: apply, diff, send, stream, tokens, whoami,
dev and worker."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from talon.cli.apply import apply_documents, summary_lines
from talon.cli.client import CliError, plain
from talon.cli.diff import diff as diff_manifests
from talon.cli.manifest_files import read_documents
from talon.cli.output import dump, table
from talon.cli.sessions import EventPrinter, send, session_scope, stream_events
from talon.client import Client
from talon.config import load_settings


def cmd_apply(client: Client, args: argparse.Namespace) -> int:
    result = apply_documents(client, read_documents(args.filename), dry_run=args.dry_run)
    for line in summary_lines(result, dry_run=args.dry_run):
        print(line)
    return 0


def cmd_diff(client: Client, args: argparse.Namespace) -> int:
    return diff_manifests(client, args.filename)


def cmd_send(client: Client, args: argparse.Namespace) -> int:
    return send(
        client, args.namespace, args.agent, args.session, args.message,
        strategy=args.strategy, wait=not args.no_wait,
    )  # fmt: skip


def cmd_stream(client: Client, args: argparse.Namespace) -> int:
    """Follows the session (through reconnects) until Ctrl-C, or until no turn is open with
    --until-turn-end; exits 1 if a turn it showed failed or was cancelled."""
    printer = EventPrinter()
    namespace, agent = session_scope(args.namespace, args.agent)
    events = stream_events(client, namespace, agent, args.session, after=args.after,
                           until_turn_end=args.until_turn_end)  # fmt: skip
    for event in events:
        if args.output == "json":
            print(json.dumps(event), flush=True)
            printer.failed |= event["type"] in ("turn.failed", "turn.cancelled")
        else:
            printer.show(event)
    return 1 if printer.failed else 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    """Cancel the session's open turns (the running one and those queued behind it)."""
    namespace, agent = session_scope(args.namespace, args.agent)
    answer = client.cancel(namespace, agent, args.session)
    cancelled = (answer.get("cancelled") or []) if isinstance(answer, dict) else []
    for turn_id in cancelled:
        print(f"turn {turn_id} cancelled")
    if not cancelled:
        print("no open turn to cancel")
    return 0


def cmd_tokens_create(client: Client, args: argparse.Namespace) -> int:
    created = client.create_token(args.name, role=args.role, namespaces=args.namespace,
                                  ttl_seconds=args.ttl, tools=args.tool)  # fmt: skip
    if args.output:
        print(dump(plain(created), args.output))
    else:
        print(f"token {created.id} created; the secret is shown only once:")
        print(created.token)
    return 0


def cmd_tokens_list(client: Client, args: argparse.Namespace) -> int:
    items = [plain(t) for t in client.tokens()]
    if args.output:
        print(dump({"items": items}, args.output))
        return 0
    rows = [
        [
            t["id"],
            t["name"],
            t["role"],
            ",".join(t["namespaces"]),
            ",".join(t.get("tools") or ["(all)"]),
            t.get("expiresAt") or "",
            "revoked" if t.get("revokedAt") else "active",
        ]
        for t in items
    ]
    print(table(rows, ["ID", "NAME", "ROLE", "NAMESPACES", "TOOLS", "EXPIRES", "STATE"]))
    return 0


def cmd_tokens_revoke(client: Client, args: argparse.Namespace) -> int:
    client.revoke_token(args.id)
    print(f"token {args.id} revoked")
    return 0


def cmd_whoami(client: Client, args: argparse.Namespace) -> int:
    print(dump(plain(client.whoami()), args.output or "yaml"))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from talon.cli.dev import DevOptions, DevStack
    from talon.cli.dev_grpc import grpc_address

    manifests = None if args.no_manifests else Path(args.manifests)
    config = Path(args.config) if args.config else None
    if config is None and Path("talon.yaml").is_file():
        config = Path("talon.yaml")
    # --host/--port win; otherwise gateway.httpAddr from the config (and its env override).
    settings = load_settings(config)
    default_host, _, default_port = settings.gateway.http_addr.rpartition(":")
    try:
        port = args.port if args.port is not None else int(default_port)
    except ValueError as exc:
        raise CliError(f"gateway.httpAddr must be HOST:PORT, not {default_port!r}") from exc
    host = args.host or default_host or "127.0.0.1"
    options = DevOptions(
        host, port, Path(args.data_dir), manifests, config,
        example_tools=not args.no_example_tools, broker=args.broker,
        grpc=grpc_address(settings, args.host, args.grpc_port),
    )  # fmt: skip
    return DevStack(options).run()


def cmd_worker(args: argparse.Namespace) -> int:
    from talon.cli.worker import run_worker

    return run_worker(
        concurrency=args.concurrency,
        demo_fallback=args.demo_fallback,
        lease_seconds=args.lease_seconds,
        visibility_seconds=args.visibility_seconds,
        max_attempts=args.max_attempts,
    )
