"""Entry point of the `talon` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import argcomplete

from talon.cli import contexts
from talon.cli.client import CliError, error_line
from talon.cli.parser import build_parser
from talon.contexts import ContextError

if TYPE_CHECKING:
    from talon.client import Client


def run_remote(client: Client, args: argparse.Namespace) -> int:
    """A command that talks to the gateway, with the SDK's errors as one-line CliErrors."""
    from talon.client import TalonError as SdkError

    try:
        return int(args.remote(client, args))
    except SdkError as exc:
        raise CliError(error_line(exc, client.base_url)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argcomplete.autocomplete(parser)  # answers a TAB and exits, before the heavy imports
    args = parser.parse_args(argv)
    from talon.client import Client
    from talon.errors import TalonError

    try:
        if hasattr(args, "local"):
            return int(args.local(args))
        target = contexts.resolve(args)
        if getattr(args, "namespace", None) is None and not getattr(args, "keep_namespace", False):
            args.namespace = target.namespace  # -n, else the context's default namespace
        with Client(target.url, target.token) as client:
            return run_remote(client, args)
    except (CliError, ContextError, TalonError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(args, "error_status", 1))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `talon stream ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
