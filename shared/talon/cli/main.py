"""Entry point of the `talon` console script."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from talon import __version__
from talon.cli.apply import apply_documents, summary_lines
from talon.cli.client import CliError, TalonClient
from talon.cli.diff import diff as diff_manifests
from talon.cli.manifest_files import read_documents
from talon.cli.output import dump, resource_table, table
from talon.cli.sessions import (
    SESSION_ALIASES,
    EventPrinter,
    get_sessions,
    send,
    sessions_path,
    stream_events,
)
from talon.config import load_settings
from talon.errors import TalonError
from talon.resources.registry import KINDS, Kind, kind_for_alias


def _kind(alias: str) -> Kind:
    kind = kind_for_alias(alias)
    if kind is None:
        known = ", ".join(k.plural for k in KINDS)
        raise CliError(f"unknown kind {alias!r}; known kinds: {known}")
    return kind


def _collection_path(kind: Kind, namespace: str | None) -> str:
    if not kind.namespaced:
        return f"/v1/{kind.plural}"
    if not namespace:
        raise CliError(f"{kind.plural} live in a namespace: pass -n NAMESPACE")
    return f"/v1/ns/{namespace}/{kind.plural}"


def cmd_apply(client: TalonClient, args: argparse.Namespace) -> int:
    result = apply_documents(client, read_documents(args.filename), dry_run=args.dry_run)
    for line in summary_lines(result):
        print(line)
    return 0


def cmd_diff(client: TalonClient, args: argparse.Namespace) -> int:
    return diff_manifests(client, args.filename)


def cmd_get(client: TalonClient, args: argparse.Namespace) -> int:
    if args.kind in SESSION_ALIASES:
        get_sessions(client, args.namespace, args.agent, args.name, args.output)
        return 0
    kind = _kind(args.kind)
    path = _collection_path(kind, args.namespace)
    if args.name:
        item = client.request("GET", f"{path}/{args.name}")
        print(dump(item, args.output) if args.output else resource_table(kind.name, [item]))
        return 0
    params = {"labelSelector": args.selector} if args.selector else None
    items = list(client.paginate(path, params))
    if args.output:
        listing = {"apiVersion": "talon.dev/v1alpha1", "kind": f"{kind.name}List", "items": items}
        print(dump(listing, args.output))
    elif items:
        print(resource_table(kind.name, items))
    else:
        where = f" in namespace {args.namespace}" if kind.namespaced else ""
        print(f"No {kind.plural} found{where}.", file=sys.stderr)
    return 0


def cmd_send(client: TalonClient, args: argparse.Namespace) -> int:
    return send(
        client, args.namespace, args.agent, args.session, args.message,
        strategy=args.strategy, wait=not args.no_wait,
    )  # fmt: skip


def cmd_stream(client: TalonClient, args: argparse.Namespace) -> int:
    """Follows the session (through reconnects) until Ctrl-C, or until no turn is open with
    --until-turn-end; exits 1 if a turn it showed failed or was cancelled."""
    printer = EventPrinter()
    events = stream_events(client, args.namespace, args.agent, args.session, after=args.after,
                           until_turn_end=args.until_turn_end)  # fmt: skip
    for event in events:
        if args.output == "json":
            print(json.dumps(event), flush=True)
            printer.failed |= event["type"] in ("turn.failed", "turn.cancelled")
        else:
            printer.show(event)
    return 1 if printer.failed else 0


def cmd_delete(client: TalonClient, args: argparse.Namespace) -> int:
    if args.kind in SESSION_ALIASES:
        client.request("DELETE", f"{sessions_path(args.namespace, args.agent)}/{args.name}")
        print(f"session/{args.name} deleted")
        return 0
    kind = _kind(args.kind)
    client.request("DELETE", f"{_collection_path(kind, args.namespace)}/{args.name}")
    print(f"{kind.name.lower()}/{args.name} deleted")
    return 0


def cmd_tokens_create(client: TalonClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "name": args.name,
        "role": args.role,
        "namespaces": args.namespace or ["*"],
    }
    if args.ttl is not None:
        body["ttlSeconds"] = args.ttl
    if args.tool:
        body["tools"] = args.tool
    created = client.request("POST", "/v1/tokens", json=body)
    if args.output:
        print(dump(created, args.output))
    else:
        print(f"token {created['id']} created; the secret is shown only once:")
        print(created["token"])
    return 0


def cmd_tokens_list(client: TalonClient, args: argparse.Namespace) -> int:
    items = list(client.paginate("/v1/tokens"))
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


def cmd_tokens_revoke(client: TalonClient, args: argparse.Namespace) -> int:
    client.request("DELETE", f"/v1/tokens/{args.id}")
    print(f"token {args.id} revoked")
    return 0


def cmd_whoami(client: TalonClient, args: argparse.Namespace) -> int:
    print(dump(client.request("GET", "/v1/whoami"), args.output or "yaml"))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from talon.cli.dev import DevOptions, DevStack

    manifests = None if args.no_manifests else Path(args.manifests)
    config = Path(args.config) if args.config else None
    if config is None and Path("talon.yaml").is_file():
        config = Path("talon.yaml")
    # --host/--port win; otherwise gateway.httpAddr from the config (and its env override).
    default_host, _, default_port = load_settings(config).gateway.http_addr.rpartition(":")
    try:
        port = args.port if args.port is not None else int(default_port)
    except ValueError as exc:
        raise CliError(f"gateway.httpAddr must be HOST:PORT, not {default_port!r}") from exc
    host = args.host or default_host or "127.0.0.1"
    options = DevOptions(
        host, port, Path(args.data_dir), manifests, config, example_tools=not args.no_example_tools
    )
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


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="talon", description="Talon: a control plane for durable AI agents."
    )
    parser.add_argument("--version", action="version", version=f"talon {__version__}")
    parser.add_argument("--url", help="gateway URL (default: $TALON_URL or http://127.0.0.1:8080)")
    parser.add_argument("--token", help="bearer token (default: $TALON_TOKEN)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=["yaml", "json"], help="print the full object")

    dev = commands.add_parser("dev", help="run the local stack (PostgreSQL + gateway)")
    dev.add_argument("--port", type=int, help="default: the port of gateway.httpAddr (8080)")
    dev.add_argument("--host", help="default: the host of gateway.httpAddr")
    dev.add_argument("--data-dir", default=".talon", help="where PostgreSQL keeps its data")
    dev.add_argument("--manifests", default="manifests", help="applied on the first start")
    dev.add_argument("--no-manifests", action="store_true", help="apply nothing")
    dev.add_argument("--config", help="talon.yaml to use (default: ./talon.yaml if present)")
    dev.add_argument(
        "--no-example-tools", action="store_true",
        help="do not start the example Stripe/HubSpot-like MCP servers (ports 8091, 8092)",
    )  # fmt: skip
    dev.set_defaults(local=cmd_dev)

    worker = commands.add_parser("worker", help="run a pull-mode worker (PostgreSQL broker)")
    worker.add_argument(
        "--concurrency", type=_at_least_one, default=4, help="turns run in parallel"
    )
    worker.add_argument(
        "--demo-fallback",
        action="store_true",
        help="answer with the built-in demo model when a profile has no credentials",
    )
    worker.add_argument(
        "--lease-seconds", type=float, default=30.0,
        help="a turn whose worker hangs (alive, not renewing) is taken over after this long; "
        "a dead worker's turns are taken over at once (see README, Crash takeover)",
    )  # fmt: skip
    worker.add_argument(
        "--visibility-seconds", type=float, default=30.0,
        help="a claimed delivery not settled by then is delivered again (at once if its "
        "worker died)",
    )  # fmt: skip
    worker.add_argument(
        "--max-attempts", type=_at_least_one, default=5,
        help="a turn started this many times without finishing (its worker kept dying) fails",
    )  # fmt: skip
    worker.set_defaults(local=cmd_worker)

    apply = commands.add_parser("apply", help="create or update resources from manifests")
    apply.add_argument("-f", "--filename", action="append", required=True, help="file or folder")
    apply.add_argument("--dry-run", action="store_true", help="validate without saving")
    apply.set_defaults(remote=cmd_apply)

    diff = commands.add_parser(
        "diff", help="show what applying manifests would change (exit 0 none, 1 some, 2 error)"
    )
    diff.add_argument("-f", "--filename", action="append", required=True, help="file or folder")
    diff.set_defaults(remote=cmd_diff, error_status=2)

    get = commands.add_parser("get", parents=[output], help="list or show resources")
    get.add_argument("kind", help="agents, agent-templates, schedules, namespaces, ...")
    get.add_argument("name", nargs="?")
    get.add_argument("-n", "--namespace")
    get.add_argument("-l", "--selector", help="label selector, e.g. app=support,tier!=free")
    get.add_argument("--agent", help="the agent, for sessions")
    get.set_defaults(remote=cmd_get)

    delete = commands.add_parser("delete", help="delete a resource")
    delete.add_argument("kind")
    delete.add_argument("name")
    delete.add_argument("-n", "--namespace")
    delete.add_argument("--agent", help="the agent, for sessions")
    delete.set_defaults(remote=cmd_delete)

    send_cmd = commands.add_parser(
        "send", help="post a message to a session (created if new) and follow the turn"
    )
    send_cmd.add_argument("agent")
    send_cmd.add_argument("session")
    send_cmd.add_argument("message")
    send_cmd.add_argument("-n", "--namespace", required=True)
    send_cmd.add_argument(
        "--strategy", choices=["enqueue", "reject", "interrupt"], default="enqueue",
        help="what to do if a turn is already running",
    )  # fmt: skip
    send_cmd.add_argument("--no-wait", action="store_true", help="do not follow the turn")
    send_cmd.set_defaults(remote=cmd_send)

    stream_cmd = commands.add_parser("stream", help="follow a session's events")
    stream_cmd.add_argument("agent")
    stream_cmd.add_argument("session")
    stream_cmd.add_argument("-n", "--namespace", required=True)
    stream_cmd.add_argument("--after", type=int, help="replay events after this id (0: all)")
    stream_cmd.add_argument("--until-turn-end", action="store_true")
    stream_cmd.add_argument("-o", "--output", choices=["json"], help="raw events as JSON lines")
    stream_cmd.set_defaults(remote=cmd_stream)

    whoami = commands.add_parser("whoami", parents=[output], help="show the current token")
    whoami.set_defaults(remote=cmd_whoami)

    tokens = commands.add_parser("tokens", help="manage API tokens (admin)")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", parents=[output], help="create a token")
    create.add_argument("name")
    create.add_argument("--role", choices=["read", "write", "admin"], default="read")
    create.add_argument(
        "-n", "--namespace", action="append", help="repeat for several; default: all namespaces"
    )
    create.add_argument("--ttl", type=int, help="lifetime in seconds")
    create.add_argument(
        "--tool", action="append",
        help="limit the token to this talon-ops tool (repeat); such a token works only at "
        "/mcp/talon-ops",
    )  # fmt: skip
    create.set_defaults(remote=cmd_tokens_create)
    listing = token_commands.add_parser("list", parents=[output], help="list tokens")
    listing.set_defaults(remote=cmd_tokens_list)
    revoke = token_commands.add_parser("revoke", help="revoke a token")
    revoke.add_argument("id")
    revoke.set_defaults(remote=cmd_tokens_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "local"):
            return int(args.local(args))
        client = TalonClient.from_env(args.url, args.token)
        try:
            return int(args.remote(client, args))
        finally:
            client.close()
    except (CliError, TalonError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(args, "error_status", 1))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `talon stream ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
