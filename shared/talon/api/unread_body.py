"""Answering without reading the request body.

A body refused for its size (or sent with a request refused before its body matters) must
not be read to the end by anyone: functions-framework reads every request's whole body into
memory after the response (its `read_request` hook), and gunicorn drains an unread body before
it parses the next request on a kept-alive connection. So the body is marked as read (empty)
for the framework and the guarded stream (body_guard.py) gives nothing more (and tells
gunicorn not to drain it), the response asks for the connection to be closed (werkzeug
honours the header; Talon's server, talon/serve, honours `CLOSE_CONNECTION` in the environ;
gunicorn alone ignores both), and the connection's read side is shut: a read then finds the
end of the stream as soon as nothing more is queued (Linux still queues what the client
sends afterwards). The response still goes out.

`finish` does this for every gateway answer given while the body is (partly) unread:
refused before authentication, a 404/405/415, a 413, a 408, an error raised before the
body was parsed, a route that ignores its body. A body read to its end costs nothing.
"""

from __future__ import annotations

import contextlib
import socket

import flask

from talon.api.body_guard import ENVIRON_KEY, GuardedInput, body_pending, server_socket

CLOSE_CONNECTION = "talon.close_connection"  # environ key: the server must not reuse it


def leave_unread(request: flask.Request, response: flask.Response) -> flask.Response:
    request._cached_data = b""  # what the framework's hook would otherwise read in full
    guarded = request.environ.get(ENVIRON_KEY)
    if isinstance(guarded, GuardedInput):
        guarded.stop()  # and whoever reads the stream itself gets nothing more
    response.headers["Connection"] = "close"
    request.environ[CLOSE_CONNECTION] = True
    sock = server_socket(request.environ)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
    return response


def finish(request: flask.Request, response: flask.Response) -> flask.Response:
    """The response as it must leave: with the body left unread if it was not read to its
    end (see body_guard.py for how reading is counted)."""
    if body_pending(request.environ):
        return leave_unread(request, response)
    return response
