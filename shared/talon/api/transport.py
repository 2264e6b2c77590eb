"""Checks on the HTTP request itself (before routing), and JSON for the errors the
functions-framework Flask app would otherwise answer in HTML.

What the WSGI server refuses before any application code runs cannot be shaped here
(measured with functions-framework 3.10.2): under gunicorn, which functions-framework runs
in production, a header line of 8,190 bytes or more, more than 100 header fields (431), a
malformed or negative Content-Length, or raw non-ASCII or NUL bytes in the request line (400),
each with a small HTML page; functions-framework lifts gunicorn's request-line limit. Under
werkzeug's server (the tests', `--debug`): a request line or header line over 64 KiB (414,
431) or more than 100 headers (431), HTML too. The per-field limit below is gunicorn's, so
the gateway refuses the same headers behind either server.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import flask
from werkzeug.exceptions import HTTPException

from talon.api.http import error_body, json_response
from talon.api.unread_body import finish
from talon.errors import BadRequest, HeadersTooLarge

MAX_HEADER_FIELD = 8190  # bytes of one `Name: value` line (gunicorn's limit_request_field_size)
MAX_HEADER_TOTAL = 64 * 1024  # all of them together
_LENGTH = re.compile(r"[0-9]{1,18}")

log = logging.getLogger("talon.gateway")


def check_request(request: flask.Request) -> None:
    """Refuse what no route can handle: a Content-Length that is no length (werkzeug reads a
    negative one as 0, so the body would silently vanish), a path that is not UTF-8 (werkzeug
    replaces what it cannot decode with U+FFFD, which is then looked up as a name), and
    header fields over the limits above."""
    length = request.environ.get("CONTENT_LENGTH")
    if length not in (None, "") and not _LENGTH.fullmatch(length):
        raise BadRequest(
            "Content-Length must be a non-negative integer",
            [{"path": "Content-Length", "message": f"{length[:40]!r} is not a length"}],
        )
    if "\ufffd" in request.path:
        raise BadRequest(
            "the request path is not valid UTF-8 once percent-decoded",
            [{"path": "(path)", "message": "not valid UTF-8 (or contains U+FFFD)"}],
        )
    total = 0
    for name, value in request.headers.items():
        size = len(name) + 2 + len(value)
        if size > MAX_HEADER_FIELD:
            raise HeadersTooLarge(
                f"header {name} is {size} bytes; limit {MAX_HEADER_FIELD}",
                [{"path": name, "message": f"longer than {MAX_HEADER_FIELD} bytes"}],
            )
        total += size
    if total > MAX_HEADER_TOTAL:
        raise HeadersTooLarge(
            f"the headers are {total} bytes; limit {MAX_HEADER_TOTAL}",
            [{"path": "(headers)", "message": f"more than {MAX_HEADER_TOTAL} bytes in all"}],
        )


def json_error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> flask.Response:
    # Shaped like the gateway's answers, request id included (a fresh one: these answers
    # come before the gateway, which validates a client's own).
    return json_response(status, body, {"X-Request-Id": uuid.uuid4().hex, **(headers or {})})


def install_json_errors(app: flask.Flask) -> None:
    """Make the framework's own HTTP errors (its 404 for /favicon.ico and /robots.txt, a
    request it cannot read) JSON like every other answer, leaving an unread body unread."""

    def as_json(exc: HTTPException) -> flask.Response:
        status = exc.code or 500
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        body = error_body(code.get(status, "bad_request"), exc.description or exc.name)
        return finish(flask.request, json_error(status, body))

    app.register_error_handler(HTTPException, as_json)


def unavailable(exc: BaseException) -> flask.Response:
    """The answer while the gateway cannot be built (its database is down at a cold start):
    a retryable JSON 503, not the framework's 500 with the exception's text."""
    log.error("gateway unavailable: %s", exc, exc_info=exc)
    body = error_body("unavailable", "the gateway is starting or its database is unreachable")
    return json_error(503, body, {"Retry-After": "1"})
