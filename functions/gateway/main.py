"""Cloud Run function `gateway`: the Talon HTTP API (every path routes here)."""

import flask
import functions_framework

from talon import entrypoints
from talon.api.body_guard import BodyGuard
from talon.api.transport import install_json_errors

# functions-framework runs this module inside its Flask app's context: its own errors
# (e.g. the 404 it answers for /favicon.ico) become JSON like the gateway's, and every
# request body is read through Talon's guard (counted, capped, on a deadline), the
# framework's own after-request read included.
app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
install_json_errors(app)
app.wsgi_app = BodyGuard(app.wsgi_app, entrypoints.request_limits)


@functions_framework.http
def gateway(request: flask.Request) -> flask.Response:
    return entrypoints.front_door()(request)
