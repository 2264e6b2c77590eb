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
- A session's SSE stream (`GET .../sessions/{id}/stream`, or a message posted with `Accept:
  text/event-stream`, with a bearer token) takes one of the process's stream slots before
  anything else is done for it: see stream_slots.py.
  Under talon.serve, whose stream hub holds open streams without a thread each (sse.py),
  the slots are counted in thousands; under any other server in threads.
- Every answer leaves an unread body unread (unread_body.finish).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import flask

from talon.actions.stream_slots import STREAM_RETRY_AFTER_SECONDS, StreamSlots
from talon.api.limits import RequestLimits
from talon.api.sse import HUB_KEY, LEASE_KEY, asks_for_events
from talon.api.transport import error_body, json_error, unavailable
from talon.api.unread_body import finish, leave_unread
from talon.auth.shared_secret import header_bytes
from talon.errors import Busy, TalonError

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
        self.streams = StreamSlots(limits.max_open_streams, limits.max_streams_per_token)
        self.hub_streams = StreamSlots(limits.max_hub_streams, limits.max_hub_streams_per_token)

    def __call__(self, request: flask.Request) -> flask.Response:
        try:
            gateway = self.build()
        except Exception as exc:  # retried on the next request (see entrypoints)
            return finish(request, unavailable(exc))
        stream_secret = _stream_secret(request, gateway)
        if stream_secret is not None:
            return self._stream(request, gateway, stream_secret)
        if not self._needs_slot(request, gateway):
            return finish(request, gateway(request))
        if not self.slots.take():
            return leave_unread(request, busy())
        try:
            return finish(request, gateway(request))
        finally:
            self.slots.give_back()

    def _stream(self, request: flask.Request, gateway: Gateway, secret: bytes) -> flask.Response:
        # A server that takes streams over (talon.serve) holds thousands without a thread
        # each; any other holds each on a thread.
        handed_over = request.environ.get(HUB_KEY) is not None
        slots = self.hub_streams if handed_over else self.streams
        try:
            lease = slots.take(secret)
        except TalonError as exc:
            body = error_body(exc.code, exc.message)
            retry = {"Retry-After": str(STREAM_RETRY_AFTER_SECONDS)}
            refused = json_error(exc.status, body, retry)
            gateway.cors.decorate(request, refused)
            return finish(request, refused)
        # The stream takes the slot and gives it back when it ends, wherever it is driven.
        request.environ[LEASE_KEY] = lease
        try:
            response = finish(request, gateway(request))
        except BaseException:
            lease.release()
            raise
        if request.environ.pop(LEASE_KEY, None) is lease:  # refused before it started
            response.call_on_close(lease.release)
        return response

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


def _stream_secret(request: flask.Request, gateway: Gateway) -> bytes | None:
    """The bearer secret of a request for a session's stream (None: not one, or no token,
    which the gateway refuses at once): `GET .../stream`, or a message posted with `Accept:
    text/event-stream`, refused a slot before anything is queued."""
    if request.method == "GET":
        suffix = "/stream"
    elif request.method == "POST" and asks_for_events(request.headers.get("Accept", "")):
        suffix = "/message"
    else:
        return None
    if not request.path.rstrip("/").endswith(suffix):
        return None
    try:
        endpoint, _ = gateway.match(request)
    except Exception:  # no such route: the gateway answers it
        return None
    if not str(endpoint).endswith(suffix):
        return None
    return bearer_secret(request.headers.get("Authorization", ""))


def busy() -> flask.Response:
    error = Busy(
        "this instance is serving as many requests without a valid token as it allows; "
        f"retry after {RETRY_AFTER_SECONDS} s or send a bearer token"
    )
    body = error_body(error.code, error.message)
    return json_error(error.status, body, {"Retry-After": str(RETRY_AFTER_SECONDS)})
