"""`python -m talon.serve --target gateway --source functions/gateway/main.py`: serve a
Cloud Run function's Flask app the way functions-framework's CLI does (its app, its gunicorn
application and environment: PORT, HOST, THREADS, WORKERS, CLOUD_RUN_TIMEOUT_SECONDS,
GUNICORN_LOG_LEVEL, FUNCTION_TARGET, FUNCTION_SOURCE), with Talon's gthread worker
(worker.py): request heads are read without holding a thread and within
`gateway.headerTimeoutSeconds`, closing a connection never blocks the server, and open event
streams are held by a stream hub instead of a thread each (stream_hub.py). Each open stream
is a socket: the open-file limit is raised to its hard limit.

functions-framework's CLI takes no gunicorn options (it builds its own gunicorn application
from the environment), hence this launcher; `talon dev` runs the gateway with it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys

import flask
import functions_framework
from functions_framework._http import create_server

from talon.config import load_settings
from talon.serve.worker import TalonThreadWorker, close_if_left_unread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m talon.serve", description=__doc__)
    env = os.environ.get
    target = env("FUNCTION_TARGET")
    parser.add_argument("--target", default=target, required=not target)
    parser.add_argument("--source", default=env("FUNCTION_SOURCE"))
    parser.add_argument("--host", default=env("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(env("PORT", "8080")))
    args = parser.parse_args(argv)
    # In the arbiter: the workers it forks inherit both.
    _raise_open_files()
    TalonThreadWorker.header_seconds = load_settings().gateway.header_timeout_seconds
    app = functions_framework.create_app(args.target, args.source)
    if not isinstance(app, flask.Flask):
        parser.error(f"{args.target} is not a Flask (http) function; serve ASGI functions "
                     "with functions-framework")  # fmt: skip
    options = {"worker_class": TalonThreadWorker, "post_request": close_if_left_unread}
    create_server(app, False, **options).run(args.host, args.port)
    return 0


def _raise_open_files() -> None:
    """The soft open-file limit up to the hard one (bounded: some systems say unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if target > soft:
        # Refused: the soft limit stays, and the stream caps follow it.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


if __name__ == "__main__":
    sys.exit(main())
