"""Answering without reading the request body.

A body refused for its size (or sent with a request refused before its body matters) must
not be read to the end by anyone: functions-framework reads every request's whole body into
memory after the response (its `read_request` hook), and gunicorn drains an unread body before
it parses the next request on a kept-alive connection. So the body is marked as read (empty)
for the framework, and the connection's read side is shut so the server finds the end of the
stream at once and closes the connection; the response itself still goes out.
"""

from __future__ import annotations

import contextlib
import socket

import flask

_SERVER_SOCKETS = ("gunicorn.socket", "werkzeug.socket")


def leave_unread(request: flask.Request, response: flask.Response) -> flask.Response:
    request._cached_data = b""  # what the framework's hook would otherwise read in full
    response.headers["Connection"] = "close"  # honoured by werkzeug; gunicorn sees the EOF
    for key in _SERVER_SOCKETS:
        sock = request.environ.get(key)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
    return response
