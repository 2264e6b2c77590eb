"""`talon config ...`: the contexts file (talon/contexts.py) from the command line."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from talon.cli.client import CliError
from talon.cli.output import table
from talon.contexts import DEFAULT_URL, ContextError, Target, config_path, find, load, save

__all__ = ["DEFAULT_URL", "Target", "config_path", "resolve"]


def resolve(args: argparse.Namespace) -> Target:
    """Where a command goes: its flags, the environment, the context, the default."""
    from talon.contexts import resolve as resolve_target

    try:
        return resolve_target(args.url, args.token, getattr(args, "context", None))
    except ContextError as exc:
        raise CliError(str(exc)) from exc


def context_names(**_: Any) -> list[str]:
    """For shell completion of context names."""
    try:
        return [c["name"] for c in load()["contexts"]]
    except ContextError:
        return []


# -- `talon config ...` --------------------------------------------------------------------


def cmd_get_contexts(args: argparse.Namespace) -> int:
    config = load()
    current = config.get("currentContext")
    rows = [["*" if c["name"] == current else "", c["name"], c.get("url", ""),
             c.get("namespace", ""), "set" if c.get("token") else ""]
            for c in config["contexts"]]  # fmt: skip
    print(table(rows, ["CURRENT", "NAME", "URL", "NAMESPACE", "TOKEN"]))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """The file as YAML, tokens shown as REDACTED unless --raw."""
    config = load()
    if not args.raw:
        config["contexts"] = [{**c, "token": "REDACTED"} if c.get("token") else c
                              for c in config["contexts"]]  # fmt: skip
    print(yaml.safe_dump(config, sort_keys=False).rstrip())
    return 0


def cmd_current_context(args: argparse.Namespace) -> int:
    current = load().get("currentContext")
    if not current:
        raise CliError("no current context is set (talon config use-context NAME)")
    print(current)
    return 0


def cmd_use_context(args: argparse.Namespace) -> int:
    config = load()
    find(config, args.name)
    config["currentContext"] = args.name
    save(config)
    print(f'Switched to context "{args.name}".')
    return 0


def cmd_set_context(args: argparse.Namespace) -> int:
    """Create the context or change the fields given (`--token ''` removes the token)."""
    config = load()
    existing = next((c for c in config["contexts"] if c["name"] == args.name), None)
    context = existing if existing is not None else {"name": args.name}
    for field in ("url", "token", "namespace"):
        value = getattr(args, field)
        if value == "":
            context.pop(field, None)
        elif value is not None:
            context[field] = value
    if existing is None:
        config["contexts"].append(context)
    if not config.get("currentContext"):
        config["currentContext"] = args.name
    save(config)
    print(f'Context "{args.name}" {"modified" if existing else "created"}.')
    return 0


def cmd_delete_context(args: argparse.Namespace) -> int:
    config = load()
    find(config, args.name)
    config["contexts"] = [c for c in config["contexts"] if c["name"] != args.name]
    if config.get("currentContext") == args.name:
        config.pop("currentContext")
    save(config)
    print(f'Deleted context "{args.name}".')
    return 0
