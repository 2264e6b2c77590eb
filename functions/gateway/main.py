"""Cloud Run function `gateway`: the Talon HTTP API (every path routes here)."""

import flask
import functions_framework

from talon import entrypoints
from talon.api.transport import install_json_errors, unavailable

# functions-framework runs this module inside its Flask app's context: its own errors
# (e.g. the 404 it answers for /favicon.ico) become JSON like the gateway's.
install_json_errors(flask.current_app)


@functions_framework.http
def gateway(request: flask.Request) -> flask.Response:
    try:
        app = entrypoints.gateway()
    except Exception as exc:  # retried on the next request (see entrypoints)
        return unavailable(exc)
    return app(request)
