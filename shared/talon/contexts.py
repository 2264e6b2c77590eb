"""Named gateways and tokens (contexts), as kubectl's kubeconfig, shared by the CLI (`talon
config ...`) and the SDK (`Client.from_env()`): a YAML file at $TALON_CLI_CONFIG, else
$XDG_CONFIG_HOME/talon/config.yaml (~/.config/talon/config.yaml), written with mode 0600 since
it holds tokens.

    currentContext: dev
    contexts:
      - name: dev
        url: http://127.0.0.1:8080
        token: tln_...
        namespace: acme        # the CLI's default for -n

What a client connects to: explicit values (the CLI's --url, --token), then the environment
(TALON_URL, TALON_TOKEN), then the context (--context or the current one), then the default.
Kept light (no SDK imports): the CLI reads it while completing a TAB.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ContextError(Exception):
    """The contexts file cannot be read or does not name the context asked for."""


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
        raise ContextError(f"{path}: cannot read: {exc}") from exc
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ContextError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    contexts = config.get("contexts") if isinstance(config, dict) else None
    if not isinstance(config, dict) or not isinstance(contexts or [], list):
        raise ContextError(f"{path}: expected a mapping with a list of contexts")
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
    raise ContextError(f"no context {name!r} in {config_path()} (known: {known})")


def resolve(url: str | None = None, token: str | None = None, context: str | None = None) -> Target:
    """What to connect to: `url`/`token` (the CLI's flags), else $TALON_URL/$TALON_TOKEN,
    else the context (`context`, or the current one), else the default URL and no token."""
    config = load()
    name = context or config.get("currentContext")
    chosen = find(config, name) if name else {}
    return Target(
        url=url or os.environ.get("TALON_URL") or chosen.get("url") or DEFAULT_URL,
        token=token or os.environ.get("TALON_TOKEN") or chosen.get("token"),
        namespace=chosen.get("namespace"),
    )
