"""Google Cloud Tasks adapter for the TaskQueue port: one HTTP task per fire, POSTed to the
scheduler function at its schedule time."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime

from google.api_core import exceptions as google_exceptions
from google.cloud import tasks_v2
from google.protobuf import timestamp_pb2

from talon.config import SchedulerSettings
from talon.scheduling.tasks import TOKEN_HEADER, FireTask

CREATE_TIMEOUT_SECONDS = 10.0


class CloudTasksQueue:
    def __init__(self, settings: SchedulerSettings) -> None:
        missing = [
            key for key in ("project", "location", "queue", "callback_url")
            if not getattr(settings, key)
        ]  # fmt: skip
        if missing:
            raise ValueError(
                "the cloud_tasks scheduler needs control_plane.scheduler." + ", ".join(missing)
            )
        self.settings = settings
        self.client = _client(settings)
        self.parent = self.client.queue_path(settings.project, settings.location, settings.queue)

    def enqueue(self, task: FireTask, deliver_at: datetime) -> None:
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(deliver_at)
        request = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=self.settings.callback_url,
            headers=self._headers(),
            body=json.dumps(task.to_json()).encode(),
        )
        if self.settings.callback_verification == "oidc":
            request.oidc_token = tasks_v2.OidcToken(
                service_account_email=self.settings.service_account_email,
                audience=self.settings.callback_audience or self.settings.callback_url,
            )
        created = tasks_v2.Task(
            name=f"{self.parent}/tasks/{task.task_id(deliver_at)}",
            schedule_time=when,
            http_request=request,
        )
        # Names are deterministic: AlreadyExists means this leg was enqueued before.
        with contextlib.suppress(google_exceptions.AlreadyExists):
            self.client.create_task(
                parent=self.parent, task=created, timeout=CREATE_TIMEOUT_SECONDS
            )

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.settings.callback_verification == "token":
            headers[TOKEN_HEADER] = self.settings.callback_token
        return headers


def _client(settings: SchedulerSettings) -> tasks_v2.CloudTasksClient:
    if not settings.emulator_host:
        return tasks_v2.CloudTasksClient()
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(settings.emulator_host)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
