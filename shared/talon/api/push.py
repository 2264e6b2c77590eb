"""The dispatch function: Pub/Sub push deliveries in, turns run, 2xx to ack or 503 to retry.
`POST /sweep` (same verification) publishes outbox rows that were committed but never sent."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from typing import Any

import flask

from talon.api.app import json_response
from talon.api.google_oidc import GoogleOidcVerifier
from talon.auth.shared_secret import same_secret, text_bytes
from talon.broker.base import Delivery, Outcome
from talon.broker.outbox import DISPATCH_TOPIC
from talon.config import MessageBrokerSettings, require_settings
from talon.errors import BadRequest, TalonError, Unauthenticated
from talon.runtime.worker import Worker
from talon.services import Services

log = logging.getLogger(__name__)
SWEEP_AFTER_SECONDS = 10.0


SETTINGS = "control_plane.message_broker"


def push_verifier(settings: MessageBrokerSettings) -> Callable[[flask.Request], None]:
    """The check every push request passes first, built once per process. In `oidc` mode a
    missing audience or account is a configuration error at start-up, not a check skipped."""
    mode = settings.push_verification
    if mode == "none":
        return lambda request: None
    if mode == "token":
        expected = text_bytes(settings.push_token)

        def check_token(request: flask.Request) -> None:
            # Query values are decoded as UTF-8 text by werkzeug.
            given = text_bytes(request.args.get("token", ""))
            if not same_secret(given, expected):
                raise Unauthenticated("push token missing or wrong")

        return check_token
    require_settings(
        "pushVerification oidc",
        {
            f"{SETTINGS}.pushAudience": settings.push_audience,
            f"{SETTINGS}.pushServiceAccountEmail": settings.push_service_account_email,
        },
    )
    return GoogleOidcVerifier(
        audience=settings.push_audience,
        email=settings.push_service_account_email,
        what="push request",
    )


def parse_envelope(body: Any) -> Delivery:
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise BadRequest(
            "not a Pub/Sub push envelope", [{"path": "message", "message": "required"}]
        )
    message = body["message"]
    try:
        data = json.loads(base64.b64decode(message.get("data", ""), validate=True) or b"{}")
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(
            "message.data is not base64 JSON", [{"path": "message.data", "message": str(exc)}]
        ) from exc
    attributes = message.get("attributes") or {}
    return Delivery(
        id=str(message.get("messageId") or message.get("message_id") or ""),
        topic=str(attributes.get("eventTopic", DISPATCH_TOPIC)),
        payload=data if isinstance(data, dict) else {},
        attempt=int(body.get("deliveryAttempt") or 1),
    )


class DispatchEndpoint:
    def __init__(self, services: Services, worker: Worker) -> None:
        self.services = services
        self.worker = worker
        self.verify_push = push_verifier(services.settings.control_plane.message_broker)

    def __call__(self, request: flask.Request) -> flask.Response:
        if request.method == "GET" and request.path.rstrip("/") == "/healthz":
            return json_response(200, {"status": "ok"})
        try:
            if request.method != "POST":
                return json_response(405, {"error": {"code": "method_not_allowed",
                                                     "message": "POST only", "details": []}},
                                     {"Allow": "POST"})  # fmt: skip
            self.verify_push(request)
            if request.path.rstrip("/") == "/sweep":
                return json_response(200, {"published": self._sweep(older_than=0.0)})
            body = request.get_json(silent=True)
            delivery = parse_envelope(body)
            result = self.worker.handle(delivery)
        except TalonError as exc:
            return json_response(exc.status, exc.to_dict())
        self._sweep()
        if result.outcome in (Outcome.ACK, Outcome.SETTLED):
            return flask.Response(status=204)
        # Any non-2xx makes Pub/Sub redeliver after its backoff.
        return json_response(503, {"error": {"code": "retry", "message": "not done yet",
                                             "details": []}})  # fmt: skip

    def _sweep(self, older_than: float = SWEEP_AFTER_SECONDS) -> int:
        """Publish outbox rows a crashed process left behind. Runs after each push and on
        `POST /sweep` (a Cloud Scheduler job), so it does not depend on traffic."""
        relay = self.services.relay
        if relay is None:
            return 0
        try:
            return relay.flush(older_than_seconds=older_than)
        except Exception as exc:
            log.warning("outbox sweep failed: %s", exc)
            return 0
