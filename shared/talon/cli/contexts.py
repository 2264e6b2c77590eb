"""Named gateways and tokens (contexts), as kubectl's kubeconfig: a YAML file at
$TALON_CLI_CONFIG, else $XDG_CONFIG_HOME/talon/config.yaml (~/.config/talon/config.yaml),
written with mode 0600 since it holds tokens.

    currentContext: dev
    contexts:
      - name: dev
        url: http://127.0.0.1:8080
        token: tln_...
        namespace: acme        # the default for -n

What a command uses: its flags (--url, --token, -n, --context), then the environment
(TALON_URL, TALON_TOKEN), then the context (--context or the current one), then the defaults.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from talon.cli.client import CliError
from talon.cli.output import table

CONFIG_ENV = "TALON_CLI_CONFIG"
DEFAULT_URL = "http://127.0.0.1:8080"


def config_path() -> Path:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "talon" / "config.yaml"


@dataclass
class Target:
    """Where a command goes: the gateway, the token and the default namespace."""

    url: str
    token: str | None
    namespace: str | None


def load(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"contexts": []}
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc}") from exc
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    contexts = config.get("contexts") if isinstance(config, dict) else None
    if not isinstance(config, dict) or not isinstance(contexts or [], list):
        raise CliError(f"{path}: expected a mapping with a list of contexts")
    config["contexts"] = [c for c in contexts or [] if isinstance(c, dict) and c.get("name")]
    return config


def save(config: dict[str, Any], path: Path | None = None) -> None:
    """Replace the file atomically, readable by its owner only (it holds tokens)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor, temporary = tempfile.mkstemp(prefix=".config-", dir=path.parent)
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w") as file:
            yaml.safe_dump(config, file, sort_keys=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def find(config: dict[str, Any], name: str) -> dict[str, Any]:
    for context in config["contexts"]:
        if context["name"] == name:
            return dict(context)
    known = ", ".join(c["name"] for c in config["contexts"]) or "none"
    raise CliError(f"no context {name!r} in {config_path()} (known: {known})")


def resolve(args: argparse.Namespace) -> Target:
    config = load()
    name = getattr(args, "context", None) or config.get("currentContext")
    context = find(config, name) if name else {}
    return Target(
        url=args.url or os.environ.get("TALON_URL") or context.get("url") or DEFAULT_URL,
        token=args.token or os.environ.get("TALON_TOKEN") or context.get("token"),
        namespace=context.get("namespace"),
    )


def context_names(**_: Any) -> list[str]:
    """For shell completion of context names."""
    try:
        return [c["name"] for c in load()["contexts"]]
    except CliError:
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
