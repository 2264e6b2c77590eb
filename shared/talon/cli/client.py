"""How the CLI reaches the gateway: the SDK's `Client`, and the SDK's errors as one line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used: the parser (and completion) does not need the SDK
    from pydantic import BaseModel

    from talon.client import TalonError


class CliError(Exception):
    """A failure shown to the user as one line; the command exits non-zero."""


def error_line(error: TalonError, base_url: str) -> str:
    """The SDK's error as the CLI prints it: the API's message, status and code, then the
    fields it names that the message does not already say."""
    from talon.client import APIError, TalonConnectionError

    if isinstance(error, TalonConnectionError):
        return f"cannot reach the gateway at {base_url}: {error}"
    if not isinstance(error, APIError):
        return str(error)
    text = f"{error.message or 'HTTP error'} (HTTP {error.status} {error.code or 'http_error'})"
    extra = [
        f"{d.get('path')}: {d.get('message')}"
        for d in error.details
        if d.get("path") and f"{d.get('path')}: {d.get('message')}" not in error.message
    ]
    return f"{text}: {'; '.join(extra)}" if extra else text


def plain(value: BaseModel) -> dict[str, Any]:
    """An SDK model as the API sent it (for -o yaml/json): the fields it had, by their names
    on the wire."""
    return value.model_dump(by_alias=True, exclude_unset=True)
