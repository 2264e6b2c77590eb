"""What the SDK raises: the API's error answer as an exception that carries its status, code,
message and the paths of the fields it names."""

from __future__ import annotations

from typing import Any


class TalonError(Exception):
    """Base class of everything the SDK raises."""


class TalonConnectionError(TalonError):
    """The gateway could not be reached (or the connection dropped before an answer)."""


class UnexpectedAnswer(TalonError):
    """A success status whose body is not what the API documents (a proxy's page, a gateway
    of another version)."""


def parsed(call_name: str, parse: Any, body: Any) -> Any:
    """`parse(body)`, or UnexpectedAnswer naming the call when the body does not fit."""
    from pydantic import ValidationError

    try:
        return parse(body)
    except (ValidationError, TypeError, KeyError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnexpectedAnswer(f"{call_name}: the answer is not what the API documents "
                               f"({first})") from exc  # fmt: skip


class APIError(TalonError):
    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, str]] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        super().__init__(f"{message} (HTTP {status} {code})")

    @property
    def fields(self) -> list[str]:
        """The paths the error names (`items[0].spec.cron`, `Last-Event-ID`, ...)."""
        return [d["path"] for d in self.details if d.get("path")]


class BadRequest(APIError):
    """400: the request is malformed."""


class Unauthenticated(APIError):
    """401: no token, or an invalid, expired or revoked one."""


class PermissionDenied(APIError):
    """403: the token's role or tools do not allow this."""


class NotFound(APIError):
    """404: no such object (or one in a namespace the token may not see)."""


class Conflict(APIError):
    """409: a stale resourceVersion, a busy session under `reject`, an object in use."""


class Invalid(APIError):
    """422: the body is well formed but a field is not acceptable."""


class ServerError(APIError):
    """5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest, 401: Unauthenticated, 403: PermissionDenied, 404: NotFound,
    409: Conflict, 422: Invalid,
}  # fmt: skip


def error_from(status: int, body: Any) -> APIError:
    """The exception for an error answer (any body: a proxy may answer HTML)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": "http_error", "message": f"HTTP {status}", "details": []}
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    return cls(status, str(error.get("code", "")), str(error.get("message", "")), details)
