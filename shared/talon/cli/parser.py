"""The `talon` command line: every command, option and its help (completed by argcomplete)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

import argcomplete

from talon import __version__
from talon.cli import contexts
from talon.cli.contexts import context_names
from talon.cli.output import output_format

# What this module imports stays light: completion builds the parser on every TAB, so the
# commands (and the SDK, httpx, pydantic under them) are imported only when one runs.


def lazy(target: str) -> Callable[..., int]:
    """The command `module:function`, imported when it runs."""
    module, _, name = target.partition(":")

    def run(*args: Any) -> int:
        return int(getattr(importlib.import_module(module), name)(*args))

    return run


def kind_words(**_: Any) -> list[str]:
    """For shell completion of KIND."""
    from talon.resources.registry import KINDS

    return sorted({"session", "sessions", "turn", "turns", *(k.plural for k in KINDS)}
                  | {k.name.lower() for k in KINDS})  # fmt: skip


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
    parser.add_argument(
        "--url", help="gateway URL (default: $TALON_URL, the context's, http://127.0.0.1:8080)"
    )
    parser.add_argument("--token", help="bearer token (default: $TALON_TOKEN, the context's)")
    parser.add_argument(
        "--context", help="a context of the config file instead of the current one"
    ).completer = context_names  # type: ignore[attr-defined]
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "-o", "--output", type=output_format, metavar="FORMAT",
        help="yaml, json, wide, name or jsonpath=TEMPLATE (e.g. 'jsonpath={.metadata.name}')",
    )  # fmt: skip
    full = argparse.ArgumentParser(add_help=False)
    full.add_argument("-o", "--output", choices=["yaml", "json"], help="print the full object")

    dev = commands.add_parser("dev", help="run the local stack (PostgreSQL + gateway)")
    dev.add_argument("--port", type=int, help="default: the port of gateway.httpAddr (8080)")
    dev.add_argument("--host", help="default: the host of gateway.httpAddr")
    dev.add_argument("--grpc-port", type=int, help="default: the port of gateway.grpcAddr (50051)")
    dev.add_argument("--data-dir", default=".talon", help="where PostgreSQL keeps its data")
    dev.add_argument("--manifests", default="manifests", help="applied on the first start")
    dev.add_argument("--no-manifests", action="store_true", help="apply nothing")
    dev.add_argument("--config", help="talon.yaml to use (default: ./talon.yaml if present)")
    dev.add_argument(
        "--no-example-tools", action="store_true",
        help="do not start the example Stripe/HubSpot-like MCP servers (on free ports)",
    )  # fmt: skip
    dev.add_argument(
        "--broker", choices=["postgres", "pubsub"], default="postgres",
        help="pubsub: run on the Pub/Sub emulator (started and stopped here) with the pull worker",
    )  # fmt: skip
    dev.set_defaults(local=lazy("talon.cli.commands:cmd_dev"))

    worker = commands.add_parser("worker", help="run a pull-mode worker (PostgreSQL or Pub/Sub)")
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
    worker.set_defaults(local=lazy("talon.cli.commands:cmd_worker"))

    apply = commands.add_parser("apply", help="create or update resources from manifests")
    apply.add_argument("-f", "--filename", action="append", required=True, help="file or folder")
    apply.add_argument("--dry-run", action="store_true", help="validate without saving")
    apply.set_defaults(remote=lazy("talon.cli.commands:cmd_apply"))

    diff = commands.add_parser(
        "diff", help="show what applying manifests would change (exit 0 none, 1 some, 2 error)"
    )
    diff.add_argument("-f", "--filename", action="append", required=True, help="file or folder")
    diff.set_defaults(remote=lazy("talon.cli.commands:cmd_diff"), error_status=2)

    get = commands.add_parser("get", parents=[output], help="list or show resources")
    get.add_argument(
        "kind", help="agents, agent-templates, schedules, namespaces, sessions, turns, ..."
    ).completer = kind_words  # type: ignore[attr-defined]
    get.add_argument("name", nargs="?")
    get.add_argument("-n", "--namespace", help="default: the context's namespace")
    get.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace the token sees"
    )
    get.add_argument("-l", "--selector", help="label selector, e.g. app=support,tier!=free")
    get.add_argument("--agent", help="the agent, for sessions and turns")
    get.add_argument("--session", help="the session, for turns")
    get.add_argument(
        "-w", "--watch", action="store_true",
        help="sessions and turns: print changes as they happen, until Ctrl-C",
    )  # fmt: skip
    get.set_defaults(remote=lazy("talon.cli.resources:cmd_get"))

    describe = commands.add_parser(
        "describe", help="an object, its status and related objects, for people"
    )
    describe.add_argument("kind", help="agent, session, schedule, ...").completer = kind_words  # type: ignore[attr-defined]
    describe.add_argument("name")
    describe.add_argument("-n", "--namespace", help="default: the context's namespace")
    describe.add_argument("--agent", help="the agent, for sessions")
    describe.set_defaults(remote=lazy("talon.cli.resources:cmd_describe"))

    delete = commands.add_parser("delete", help="delete resources by name or from manifests")
    delete.add_argument("kind", nargs="?").completer = kind_words  # type: ignore[attr-defined]
    delete.add_argument("name", nargs="?")
    delete.add_argument(
        "-f", "--filename", action="append", help="delete what these files or folders define"
    )
    delete.add_argument(
        "--ignore-not-found", action="store_true", help="with -f: skip objects already gone"
    )
    delete.add_argument("-n", "--namespace", help="default: the context's namespace")
    delete.add_argument("--agent", help="the agent, for sessions")
    delete.set_defaults(remote=lazy("talon.cli.resources:cmd_delete"))

    send_cmd = commands.add_parser(
        "send", help="post a message to a session (created if new) and follow the turn"
    )
    send_cmd.add_argument("agent")
    send_cmd.add_argument("session")
    send_cmd.add_argument("message")
    send_cmd.add_argument("-n", "--namespace", help="default: the context's namespace")
    send_cmd.add_argument(
        "--strategy", choices=["enqueue", "reject", "interrupt"], default="enqueue",
        help="what to do if a turn is already running",
    )  # fmt: skip
    send_cmd.add_argument("--no-wait", action="store_true", help="do not follow the turn")
    send_cmd.set_defaults(remote=lazy("talon.cli.commands:cmd_send"))

    cancel_cmd = commands.add_parser("cancel", help="cancel a session's open turns")
    cancel_cmd.add_argument("agent")
    cancel_cmd.add_argument("session")
    cancel_cmd.add_argument("-n", "--namespace", help="default: the context's namespace")
    cancel_cmd.set_defaults(remote=lazy("talon.cli.commands:cmd_cancel"))

    stream_cmd = commands.add_parser("stream", help="follow a session's events")
    stream_cmd.add_argument("agent")
    stream_cmd.add_argument("session")
    stream_cmd.add_argument("-n", "--namespace", help="default: the context's namespace")
    stream_cmd.add_argument("--after", type=int, help="replay events after this id (0: all)")
    stream_cmd.add_argument("--until-turn-end", action="store_true")
    stream_cmd.add_argument("-o", "--output", choices=["json"], help="raw events as JSON lines")
    stream_cmd.set_defaults(remote=lazy("talon.cli.commands:cmd_stream"))

    whoami = commands.add_parser("whoami", parents=[full], help="show the current token")
    whoami.set_defaults(remote=lazy("talon.cli.commands:cmd_whoami"))

    tokens = commands.add_parser("tokens", help="manage API tokens (admin)")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", parents=[full], help="create a token")
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
    create.set_defaults(remote=lazy("talon.cli.commands:cmd_tokens_create"), keep_namespace=True)
    listing = token_commands.add_parser("list", parents=[full], help="list tokens")
    listing.set_defaults(remote=lazy("talon.cli.commands:cmd_tokens_list"))
    revoke = token_commands.add_parser("revoke", help="revoke a token")
    revoke.add_argument("id")
    revoke.set_defaults(remote=lazy("talon.cli.commands:cmd_tokens_revoke"))
    _config_commands(commands)
    completion = commands.add_parser("completion", help="print the shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh", "fish"])
    completion.set_defaults(local=cmd_completion)
    return parser


def _config_commands(commands: Any) -> None:
    config = commands.add_parser(
        "config", help="contexts: named gateways and tokens (a kubeconfig for Talon)"
    )
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    actions.add_parser("get-contexts", help="list the contexts").set_defaults(
        local=contexts.cmd_get_contexts
    )
    view = actions.add_parser("view", help="print the config file (tokens redacted)")
    view.add_argument("--raw", action="store_true", help="show the tokens too")
    view.set_defaults(local=contexts.cmd_view)
    actions.add_parser("current-context", help="print the current context").set_defaults(
        local=contexts.cmd_current_context
    )
    for verb, handler, text in (
        ("use-context", contexts.cmd_use_context, "make a context the current one"),
        ("delete-context", contexts.cmd_delete_context, "remove a context"),
    ):
        action = actions.add_parser(verb, help=text)
        action.add_argument("name").completer = contexts.context_names
        action.set_defaults(local=handler)
    set_context = actions.add_parser(
        "set-context", help="create a context or change its fields ('' removes one)"
    )
    set_context.add_argument("name").completer = contexts.context_names
    set_context.add_argument("--url", help="the gateway")
    set_context.add_argument("--token", help="the bearer token (stored in the file, mode 0600)")
    set_context.add_argument("--namespace", "-n", help="the default namespace")
    set_context.set_defaults(local=contexts.cmd_set_context)


def cmd_completion(args: argparse.Namespace) -> int:
    """The script that makes the shell ask `talon` (argcomplete) for completions."""
    print(argcomplete.shellcode(["talon"], shell=args.shell))
    return 0
