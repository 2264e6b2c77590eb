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
