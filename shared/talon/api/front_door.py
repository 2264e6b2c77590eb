"""What every gateway request passes through before and after the Gateway itself.

- Requests without a verified bearer token share a fixed number of slots per process
  (`RequestLimits.max_unauthenticated`, by default half the server's threads): beyond it
  they get a fast 503 with Retry-After and their connection closed, so requests with a
  token always find a free thread. Which requests count: those without an `Authorization:
  Bearer` header, and those for talon-ops (forwarded with their body before the ops_mcp
  function checks the token) whose token the gateway cannot verify. Every other route
  checks the token before it reads anything, so a wrong token costs one lookup, not a
  thread. `GET /healthz` never counts: it is the platform's probe, it reads no body, and an
  instance whose slots are full is healthy.
- Every answer leaves an unread body unread (unread_body.finish).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import flask

from talon.api.limits import RequestLimits
from talon.api.transport import error_body, json_error, unavailable
from talon.api.unread_body import finish, leave_unread
from talon.auth.shared_secret import header_bytes
from talon.errors import Busy

if TYPE_CHECKING:
    from talon.api.app import Gateway

HEALTH_PATH = "/healthz"
RETRY_AFTER_SECONDS = 1


class Slots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.used >= self.size:
                return False
            self.used += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.used -= 1


def bearer_secret(header: str) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` value, as the bytes the client sent."""
    scheme, _, secret = header.partition(" ")
    secret = secret.strip(" \t")
    if scheme.lower() != "bearer" or not secret:
        return None
    return header_bytes(secret)


class FrontDoor:
    def __init__(self, build: Callable[[], Gateway], limits: RequestLimits) -> None:
        self.build = build
        self.slots = Slots(limits.max_unauthenticated)

    def __call__(self, request: flask.Request) -> flask.Response:
        try:
            gateway = self.build()
        except Exception as exc:  # retried on the next request (see entrypoints)
            return finish(request, unavailable(exc))
        if not self._needs_slot(request, gateway):
            return finish(request, gateway(request))
        if not self.slots.take():
            return leave_unread(request, busy())
        try:
            return finish(request, gateway(request))
        finally:
            self.slots.give_back()

    @staticmethod
    def _needs_slot(request: flask.Request, gateway: Gateway) -> bool:
        if request.path == HEALTH_PATH:
            return False
        secret = bearer_secret(request.headers.get("Authorization", ""))
        if secret is None:
            return True
        if gateway.ops_proxy is not None and gateway.ops_proxy.handles(request.path):
            try:
                gateway.services.tokens.authenticate(secret)  # cached per process
            except Exception:  # unknown, expired, revoked, or cannot be checked now
                return True
        return False


def busy() -> flask.Response:
    error = Busy(
        "this instance is serving as many requests without a valid token as it allows; "
        f"retry after {RETRY_AFTER_SECONDS} s or send a bearer token"
    )
    body = error_body(error.code, error.message)
    return json_error(error.status, body, {"Retry-After": str(RETRY_AFTER_SECONDS)})
