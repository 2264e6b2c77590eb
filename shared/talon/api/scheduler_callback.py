"""The scheduler function: Cloud Tasks delivers each schedule fire here (`POST /fire`, any
path but `/sweep`), 2xx to finish the task, anything else to have the queue retry it.
`POST /sweep` (same verification; a Cloud Scheduler job) enqueues fires that have no task."""

from __future__ import annotations

import logging
from collections.abc import Callable

import flask

from talon.api.google_oidc import GoogleOidcVerifier
from talon.api.http import error_response, json_response
from talon.auth.shared_secret import header_bytes, same_secret, text_bytes
from talon.config import SchedulerSettings, require_settings
from talon.errors import TalonError, Unauthenticated
from talon.scheduling.tasks import TOKEN_HEADER, FireTask, TaskScheduler

log = logging.getLogger(__name__)


SETTINGS = "control_plane.scheduler"


def callback_verifier(settings: SchedulerSettings) -> Callable[[flask.Request], None]:
    """The check every callback passes first, built once per process. In `oidc` mode a
    missing audience or account is a configuration error at start-up, not a check skipped."""
    mode = settings.callback_verification
    if mode == "none":
        return lambda request: None
    if mode == "token":
        require_settings(
            "callbackVerification token", {f"{SETTINGS}.callbackToken": settings.callback_token}
        )
        expected = text_bytes(settings.callback_token)

        def check_token(request: flask.Request) -> None:
            given = header_bytes(request.headers.get(TOKEN_HEADER, ""))
            if not same_secret(given, expected):
                raise Unauthenticated(f"{TOKEN_HEADER} missing or wrong")

        return check_token
    audience = settings.callback_audience or settings.callback_url
    require_settings(
        "callbackVerification oidc (the audience defaults to callbackUrl)",
        {
            f"{SETTINGS}.callbackAudience": audience,
            f"{SETTINGS}.serviceAccountEmail": settings.service_account_email,
        },
    )
    return GoogleOidcVerifier(
        audience=audience, email=settings.service_account_email, what="scheduler callback"
    )


class SchedulerEndpoint:
    def __init__(self, settings: SchedulerSettings, tasks: TaskScheduler) -> None:
        self.settings = settings
        self.tasks = tasks
        self.verify_callback = callback_verifier(settings)

    def __call__(self, request: flask.Request) -> flask.Response:
        if request.method == "GET" and request.path.rstrip("/") == "/healthz":
            return json_response(200, {"status": "ok"})
        if request.method != "POST":
            return error_response(405, "method_not_allowed", "POST only",
                                  headers={"Allow": "POST"})  # fmt: skip
        try:
            self.verify_callback(request)
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
