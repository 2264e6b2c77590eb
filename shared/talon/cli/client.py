"""A small HTTP client for the gateway API, used by the CLI (and handy in scripts)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    """A failure shown to the user as one line; the command exits non-zero."""


class ApiError(CliError):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, str]]):
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.message} (HTTP {self.status} {self.code})"
        extra = [
            f"{d.get('path')}: {d.get('message')}"
            for d in self.details
            if d.get("path") and f"{d.get('path')}: {d.get('message')}" not in self.message
        ]
        return f"{text}: {'; '.join(extra)}" if extra else text


class TalonClient:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "talon-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.token = token
        self.transport = transport  # the SDK's stream (cli/sessions.py) goes through it too
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> TalonClient:
        return cls(
            url or os.environ.get("TALON_URL") or DEFAULT_URL,
            token or os.environ.get("TALON_TOKEN"),
        )

    @property
    def http(self) -> httpx.Client:
        return self._http

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach the gateway at {self.base_url}: {exc}") from exc
        if response.is_success:
            return response.json() if response.content else None
        raise api_error(response)

    def paginate(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        query = dict(params or {})
        while True:
            page = self.request("GET", path, params=query)
            yield from page.get("items", [])
            token = page.get("nextPageToken")
            if not token:
                return
            query["pageToken"] = token


def api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(
            response.status_code,
            str(error.get("code", "error")),
            str(error.get("message", "")),
            list(error.get("details") or []),
        )
    except (ValueError, KeyError, TypeError):
        snippet = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        return ApiError(response.status_code, "http_error", snippet or response.reason_phrase, [])
