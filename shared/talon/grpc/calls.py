"""One gRPC call: authenticate from `authorization` metadata, authorize (the same checks as
the HTTP API), run, and turn Talon's errors into statuses with details."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from talon.auth.access import authenticate, authorize, refuse_tool_tokens
from talon.auth.principal import Principal
from talon.errors import BadRequest, TalonError
from talon.grpc.convert import to_plain
from talon.grpc.errors import to_status
from talon.json_values import Problem, check
from talon.resources.service import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from talon.services import Services

log = logging.getLogger("talon.grpc")
T = TypeVar("T")


def metadata_value(context: grpc.ServicerContext, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return ""


def required(value: str, field: str) -> str:
    if not value:
        raise BadRequest(f"{field} is required", [{"path": field, "message": "required"}])
    return value


def page_size(value: int, field: str = "page_size") -> int:
    """0: the default; above the maximum: the maximum (Google's API design guide)."""
    if value < 0:
        raise BadRequest(f"{field} must not be negative", [{"path": field, "message": "negative"}])
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def check_request(request: Message) -> None:
    """Refuse what the HTTP API's body decoding refuses (talon.json_values): NUL characters,
    non-finite numbers, nesting deeper than 64 levels, anywhere in the request."""
    try:
        check(to_plain(request))
    except Problem as exc:
        raise BadRequest(exc.message, exc.details) from exc


def guarded(handler: Callable[..., T]) -> Callable[..., T]:
    """A handler whose request is checked (check_request) and may be refused before its
    call runs (a required field missing): that ends the call with its status too. The
    request and context are the last two arguments."""

    def call(*args: Any) -> T:
        try:
            check_request(args[-2])
            return handler(*args)
        except TalonError as exc:
            Calls.abort(args[-1], exc)

    return call


class Calls:
    def __init__(self, services: Services) -> None:
        self.services = services

    def principal(self, context: grpc.ServicerContext) -> Principal:
        principal = authenticate(self.services.tokens, metadata_value(context, "authorization"))
        refuse_tool_tokens(principal)
        return principal

    def run(
        self,
        context: grpc.ServicerContext,
        role: str,
        namespace: str | None,
        body: Callable[[Principal], T],
        *,
        prefix: str = "",
        rename: dict[str, str] | None = None,
    ) -> T:
        """`body` as the caller, once it may make a `role` call in `namespace` (None: a call
        that names none); errors' detail paths get `prefix` or `rename`."""
        try:
            principal = self.principal(context)
            authorize(principal, role, namespace)
            return body(principal)
        except TalonError as exc:
            self.abort(context, exc, prefix, rename)
        except Exception:
            log.exception("unhandled error in a gRPC call")
            context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def stream(
        self,
        context: grpc.ServicerContext,
        role: str,
        namespace: str | None,
        body: Callable[[Principal], Iterator[T]],
        *,
        rename: dict[str, str] | None = None,
    ) -> Iterator[T]:
        """As `run`, for a server-streaming call: errors while streaming end it the same way."""
        try:
            principal = self.principal(context)
            authorize(principal, role, namespace)
            yield from body(principal)
        except TalonError as exc:
            self.abort(context, exc, "", rename)
        except Exception:
            if not context.is_active():
                return  # the client went away
            log.exception("unhandled error in a gRPC call")
            context.abort(grpc.StatusCode.INTERNAL, "internal error")

    @staticmethod
    def abort(
        context: grpc.ServicerContext,
        exc: TalonError,
        prefix: str = "",
        rename: dict[str, str] | None = None,
    ) -> NoReturn:
        context.abort_with_status(to_status(exc, prefix, rename))
        raise AssertionError("abort_with_status returns only by raising")
