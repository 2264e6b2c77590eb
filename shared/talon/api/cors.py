"""Cross-origin requests to the API from the browser origins the operator allows
(`gateway.allowedOrigins`): a dashboard hosted elsewhere, or one gateway's dashboard that
saved another gateway.

Tokens travel in the Authorization header, never in cookies, so a response never allows
credentials; an origin not on the list gets no CORS headers and the browser keeps the
answer from the page, as it would without this module.
"""

from __future__ import annotations

import flask

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"
# What the dashboard and the CLI send: JSON or YAML bodies, retry-safe posts, stream resumes.
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Request-Id"
# The Talon-* headers: what a message posted for its events answers besides them.
EXPOSED_HEADERS = (
    "X-Request-Id, Allow, WWW-Authenticate, Retry-After, Talon-Turn-Id, Talon-Message-Seq, "
    "Talon-Stream-From"
)
PREFLIGHT_MAX_AGE = "600"


class Cors:
    def __init__(self, allowed_origins: list[str]) -> None:
        self.allowed = frozenset(origin.lower() for origin in allowed_origins)

    def _origin(self, request: flask.Request) -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin is not None and origin.lower() in self.allowed else None

    def preflight(self, request: flask.Request) -> flask.Response | None:
        """The answer to an allowed origin's preflight (OPTIONS with
        Access-Control-Request-Method); None for anything else."""
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = self._origin(request)
        if origin is None:
            return None
        response = flask.Response(status=204)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        response.headers["Vary"] = "Origin"
        return response

    def decorate(self, request: flask.Request, response: flask.Response) -> None:
        # Vary even when the origin is refused: a cache must not hand one origin's answer
        # (with or without the header) to another.
        if self.allowed:
            response.headers.add("Vary", "Origin")
        origin = self._origin(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
