"""The scheduler function: Cloud Tasks delivers each schedule fire here (`POST /fire`, any
path but `/sweep`), 2xx to finish the task, anything else to have the queue retry it.
`POST /sweep` (same verification; a Cloud Scheduler job) enqueues fires that have no task."""

from __future__ import annotations

import hmac
import logging

import flask

from talon.api.app import json_response
from talon.api.google_oidc import verify_google_oidc
from talon.config import SchedulerSettings
from talon.errors import TalonError, Unauthenticated
from talon.scheduling.tasks import TOKEN_HEADER, FireTask, TaskScheduler

log = logging.getLogger(__name__)


def verify_callback(request: flask.Request, settings: SchedulerSettings) -> None:
    mode = settings.callback_verification
    if mode == "none":
        return
    if mode == "token":
        given = request.headers.get(TOKEN_HEADER, "")
        if not settings.callback_token or not hmac.compare_digest(given, settings.callback_token):
            raise Unauthenticated(f"{TOKEN_HEADER} missing or wrong")
        return
    verify_google_oidc(
        request,
        audience=settings.callback_audience or settings.callback_url,
        email=settings.service_account_email,
        what="scheduler callback",
    )


class SchedulerEndpoint:
    def __init__(self, settings: SchedulerSettings, tasks: TaskScheduler) -> None:
        self.settings = settings
        self.tasks = tasks

    def __call__(self, request: flask.Request) -> flask.Response:
        if request.method == "GET" and request.path.rstrip("/") == "/healthz":
            return json_response(200, {"status": "ok"})
        if request.method != "POST":
            return json_response(405, {"error": {"code": "method_not_allowed",
                                                 "message": "POST only", "details": []}},
                                 {"Allow": "POST"})  # fmt: skip
        try:
            verify_callback(request, self.settings)
            if request.path.rstrip("/") == "/sweep":
                return json_response(200, {"enqueued": self.tasks.sync()})
            task = FireTask.from_json(request.get_json(silent=True))
            result = self.tasks.deliver(task)
        except TalonError as exc:
            # A malformed or unauthenticated task is answered 4xx; Cloud Tasks retries it
            # until its retry limit, and the log says why.
            log.warning("scheduler callback refused: %s", exc.message)
            return json_response(exc.status, exc.to_dict())
        log.info(
            "schedule %s/%s fire %s: %s (task %s, attempt %s)",
            task.namespace, task.name, task.to_json()["fireAt"], result.get("outcome"),
            request.headers.get("X-CloudTasks-TaskName", "?"),
            request.headers.get("X-CloudTasks-TaskRetryCount", "?"),
        )  # fmt: skip
        return json_response(200, result)
