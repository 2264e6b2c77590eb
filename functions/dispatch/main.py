"""Cloud Run function `dispatch`: the Pub/Sub push endpoint that runs session turns."""

import flask
import functions_framework

from talon import entrypoints


@functions_framework.http
def dispatch(request: flask.Request) -> flask.Response:
    return entrypoints.dispatch()(request)
