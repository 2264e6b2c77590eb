"""Responses and error rendering for every HTTP entry point (the gateway, the dispatch and
scheduler functions, the ops proxy, the dashboard's files): one JSON shape,
`{"error": {"code", "message", "details": [{"path", "message"}]}}`, built in one place."""

from __future__ import annotations

import json
from typing import Any

import flask


def json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(
        json.dumps(payload, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
        headers=headers,
    )


def error_body(
    code: str, message: str, details: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> flask.Response:
    return json_response(status, error_body(code, message, details), headers)


def http_request_entry(
    request: flask.Request, response: flask.Response, seconds: float
) -> dict[str, Any]:
    """The access log's `httpRequest`, in Cloud Logging's HttpRequest shape (it renders the
    line as a request and groups it with its trace)."""
    entry: dict[str, Any] = {
        "requestMethod": request.method,
        "requestUrl": request.url,
        "status": response.status_code,
        "latency": f"{seconds:.6f}s",
        "remoteIp": request.remote_addr,
        "userAgent": request.headers.get("User-Agent"),
        "protocol": request.environ.get("SERVER_PROTOCOL"),
    }
    if response.content_length is not None:
        entry["responseSize"] = str(response.content_length)
    if request.content_length:
        entry["requestSize"] = str(request.content_length)
    return {k: v for k, v in entry.items() if v is not None}
