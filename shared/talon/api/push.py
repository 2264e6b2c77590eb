"""The dispatch function: Pub/Sub push deliveries in, turns run, 2xx to ack or 503 to retry.
`POST /sweep` publishes outbox rows that were committed but never sent.

How a request proves it comes from our subscription (`pushVerification`): `oidc`, every
request carries a Google-signed token for the push account; `token`, each push message
carries `talonSignature`, an HMAC of the message keyed with the shared `pushToken`
(`broker/signing.py`; Pub/Sub push cannot set headers), and `/sweep` the `X-Talon-Push-Token`
header; `none`, nothing (the local emulator only). A `?token=` in the URL is refused with 400
in every mode: a secret there sits in the subscription's configuration and in request logs,
and the 400 makes a stale push endpoint show up instead of silently passing.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask

from talon.api.google_oidc import GoogleOidcVerifier
from talon.api.http import error_response, json_response
from talon.auth.shared_secret import header_bytes, same_secret, text_bytes
from talon.broker.base import Delivery, Outcome
from talon.broker.messages import event_topic, to_delivery
from talon.broker.signing import SIGNATURE_ATTRIBUTE, signed_by
from talon.config import MessageBrokerSettings, require_settings
from talon.errors import BadRequest, TalonError, Unauthenticated
from talon.runtime.worker import Worker
from talon.services import Services

log = logging.getLogger(__name__)
SWEEP_AFTER_SECONDS = 10.0
# After a push, an instance sweeps at most this often: a row waits SWEEP_AFTER_SECONDS for its
# sweep anyway, and a sweep per push was a database transaction per turn.
SWEEP_EVERY_SECONDS = 5.0
_clock = time.monotonic  # read through the module, so tests can move it
SWEEP_TOKEN_HEADER = "X-Talon-Push-Token"  # `/sweep`'s shared secret in `token` mode


SETTINGS = "control_plane.message_broker"


@dataclass(frozen=True)
class PushMessage:
    """The parts of a push envelope the dispatch function reads, checked for shape."""

    id: str
    data: bytes
    attributes: dict[str, str]
    attempt: int

    @property
    def topic(self) -> str:
        return event_topic(self.attributes)

    def delivery(self) -> Delivery:
        try:
            return to_delivery(self.id, self.data, self.attributes, self.attempt)
        except ValueError as exc:
            raise BadRequest(
                "message.data is not base64 JSON", [{"path": "message.data", "message": str(exc)}]
            ) from exc


def _invalid(path: str, message: str) -> BadRequest:
    return BadRequest("not a valid Pub/Sub push envelope", [{"path": path, "message": message}])


def read_envelope(body: Any) -> PushMessage:
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise BadRequest(
            "not a Pub/Sub push envelope", [{"path": "message", "message": "required"}]
        )
    message = body["message"]
    encoded = message.get("data", "")
    if not isinstance(encoded, str):
        raise _invalid("message.data", "must be a base64 string")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(
            "message.data is not base64 JSON", [{"path": "message.data", "message": str(exc)}]
        ) from exc
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise _invalid("message.attributes", "must be an object of strings")
    for name, value in attributes.items():
        if not isinstance(value, str):
            raise _invalid(f"message.attributes.{name}", "must be a string")
    try:
        attempt = int(body.get("deliveryAttempt") or 1)
    except (TypeError, ValueError):
        raise _invalid("deliveryAttempt", "must be a number") from None
    return PushMessage(
        id=str(message.get("messageId") or message.get("message_id") or ""),
        data=data,
        attributes=attributes,
        attempt=attempt,
    )


def _pass(_: Any) -> None:
    return None


@dataclass(frozen=True)
class PushChecks:
    """What a request to the dispatch function must pass, per `pushVerification` mode."""

    request: Callable[[flask.Request], None]  # every request (oidc: the bearer token)
    sweep: Callable[[flask.Request], None]  # `POST /sweep`, after `request`
    message: Callable[[PushMessage], None]  # each push message, after `request`


def push_checks(settings: MessageBrokerSettings) -> PushChecks:
    """Built once per process. A mode missing its settings is a configuration error at
    start-up, not a check skipped."""
    mode = settings.push_verification
    if mode == "none":
        return PushChecks(_pass, _pass, _pass)
    if mode == "token":
        require_settings("pushVerification token", {f"{SETTINGS}.pushToken": settings.push_token})
        secret = settings.push_token
        expected = text_bytes(secret)

        def check_sweep(request: flask.Request) -> None:
            given = header_bytes(request.headers.get(SWEEP_TOKEN_HEADER, ""))
            if not same_secret(given, expected):
                raise Unauthenticated(f"{SWEEP_TOKEN_HEADER} missing or wrong")

        def check_signature(message: PushMessage) -> None:
            signature = message.attributes.get(SIGNATURE_ATTRIBUTE)
            if not signature:
                raise Unauthenticated(
                    f"push message without the {SIGNATURE_ATTRIBUTE} attribute (is the "
                    f"publisher configured with {SETTINGS}.pushToken?)"
                )
            if not signed_by(secret, message.topic, message.data, signature):
                raise Unauthenticated(f"push message {SIGNATURE_ATTRIBUTE} does not match")

        return PushChecks(_pass, check_sweep, check_signature)
    require_settings(
        "pushVerification oidc",
        {
            f"{SETTINGS}.pushAudience": settings.push_audience,
            f"{SETTINGS}.pushServiceAccountEmail": settings.push_service_account_email,
        },
    )
    oidc = GoogleOidcVerifier(
        audience=settings.push_audience,
        email=settings.push_service_account_email,
        what="push request",
    )
    return PushChecks(oidc, _pass, _pass)


def refuse_secret_in_url(request: flask.Request) -> None:
    if "token" in request.args:
        log.warning("push request with ?token= refused: remove it from the push endpoint")
        raise BadRequest(
            "a secret in the URL is refused: remove ?token= from the push endpoint; in token "
            "mode the publisher signs each message (talonSignature) and /sweep takes the "
            f"{SWEEP_TOKEN_HEADER} header",
            [{"path": "token", "message": "not accepted in the query"}],
        )


class DispatchEndpoint:
    def __init__(self, services: Services, worker: Worker) -> None:
        self.services = services
        self.worker = worker
        self.checks = push_checks(services.settings.control_plane.message_broker)
        self._next_sweep = 0.0  # the _clock() from which a push sweeps again
        self._sweep_lock = threading.Lock()

    def __call__(self, request: flask.Request) -> flask.Response:
        if request.method == "GET" and request.path.rstrip("/") == "/healthz":
            return json_response(200, {"status": "ok"})
        try:
            if request.method != "POST":
                return error_response(405, "method_not_allowed", "POST only",
                                      headers={"Allow": "POST"})  # fmt: skip
            refuse_secret_in_url(request)
            self.checks.request(request)
            if request.path.rstrip("/") == "/sweep":
                self.checks.sweep(request)
                return json_response(200, {"published": self._sweep()})
            message = read_envelope(request.get_json(silent=True))
            self.checks.message(message)
            result = self.worker.handle(message.delivery())
        except TalonError as exc:
            return json_response(exc.status, exc.to_dict())
        if self._sweep_due():
            self._sweep()
        if result.outcome in (Outcome.ACK, Outcome.SETTLED):
            return flask.Response(status=204)
        # Any non-2xx makes Pub/Sub redeliver after its backoff.
        return error_response(503, "retry", "not done yet")

    def _sweep_due(self) -> bool:
        """True for one push per SWEEP_EVERY_SECONDS on this instance."""
        now = _clock()
        with self._sweep_lock:
            if now < self._next_sweep:
                return False
            self._next_sweep = now + SWEEP_EVERY_SECONDS
            return True

    def _sweep(self) -> int:
        """Publish outbox rows a crashed process left behind. Runs after a push (at most every
        SWEEP_EVERY_SECONDS) and on `POST /sweep` (a Cloud Scheduler job), so it does not
        depend on traffic."""
        relay = self.services.relay
        if relay is None:
            return 0
        try:
            # Younger rows may be being published, or their deletion pending.
            return relay.flush(older_than_seconds=SWEEP_AFTER_SECONDS)
        except Exception as exc:
            log.warning("outbox sweep failed: %s", exc)
            return 0
