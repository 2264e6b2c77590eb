"""Cloud Run function `gateway`: the Talon HTTP API (every path routes here)."""

import flask
import functions_framework

from talon import entrypoints


@functions_framework.http
def gateway(request: flask.Request) -> flask.Response:
    return entrypoints.gateway()(request)
