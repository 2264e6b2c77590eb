"""Domain errors. Adapters map them onto their transport (HTTP status, CLI exit code)."""

from __future__ import annotations

from typing import Any, Self

from pydantic import ValidationError


class TalonError(Exception):
    """An error a client can act on; `code` is stable, `message` is for humans."""

    code = "internal"
    status = 500

    def __init__(self, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    @classmethod
    def at(cls, path: str, message: str) -> Self:
        """The error of one field, parameter or header: `path` and what is wrong with it."""
        return cls(f"{path} {message}", [{"path": path, "message": message}])

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(TalonError):
    code, status = "bad_request", 400


class Invalid(TalonError):
    code, status = "invalid", 422


class Unauthenticated(TalonError):
    code, status = "unauthenticated", 401


class PermissionDenied(TalonError):
    code, status = "permission_denied", 403


class NotFound(TalonError):
    code, status = "not_found", 404


class MethodNotAllowed(TalonError):
    code, status = "method_not_allowed", 405


class RequestTimeout(TalonError):
    code, status = "request_timeout", 408


class Conflict(TalonError):
    code, status = "conflict", 409


class AlreadyExists(Conflict):
    """A create of a name that is taken (HTTP 409 like any conflict; gRPC ALREADY_EXISTS)."""


class PayloadTooLarge(TalonError):
    code, status = "payload_too_large", 413


class UnsupportedMediaType(TalonError):
    code, status = "unsupported_media_type", 415


class HeadersTooLarge(TalonError):
    code, status = "headers_too_large", 431


class Unavailable(TalonError):
    code, status = "unavailable", 503


class Busy(TalonError):
    """This instance is serving as many requests without a verified token as it allows."""

    code, status = "busy", 503


class TooManyStreams(TalonError):
    """The reader's token has as many streams open on this instance as it allows."""

    code, status = "too_many_streams", 429


class ConfigError(TalonError):
    code = "config"


def format_location(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """('spec', 'profiles', 0, 'name') -> 'spec.profiles[0].name'."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "(root)"


def details_from_validation_error(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    details = []
    for err in exc.errors(include_url=False):
        # Pydantic appends the validator name to union/tagged locations; keep only data keys.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        details.append({"path": format_location(loc, prefix), "message": message})
    return details
