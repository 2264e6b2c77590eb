"""Cloud Run function `scheduler`: Cloud Tasks delivers each schedule fire here."""

import flask
import functions_framework

from talon import entrypoints


@functions_framework.http
def scheduler(request: flask.Request) -> flask.Response:
    return entrypoints.scheduler()(request)
