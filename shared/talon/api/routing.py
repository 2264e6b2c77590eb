"""The route table: one declaration feeds the werkzeug URL map and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flask

from talon.auth.principal import Principal
from talon.services import Services

Handler = Callable[..., Any]


@dataclass
class Context:
    request: flask.Request
    services: Services
    principal: Principal | None
    request_id: str

    def query_int(self, name: str, default: int, minimum: int, maximum: int) -> int:
        from talon.errors import BadRequest

        raw = self.request.args.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise BadRequest(
                f"{name} must be an integer from {minimum} to {maximum}",
                [{"path": name, "message": f"must be an integer from {minimum} to {maximum}"}],
            )
        return value

    def query_bool(self, name: str) -> bool:
        from talon.errors import BadRequest

        raw = self.request.args.get(name, "false").lower()
        if raw not in ("true", "false", "1", "0", ""):
            raise BadRequest(
                f"{name} must be true or false", [{"path": name, "message": "must be a boolean"}]
            )
        return raw in ("true", "1")


@dataclass(frozen=True)
class Route:
    method: str
    rule: str  # werkzeug syntax: /v1/ns/<ns>/agents/<name>
    handler: Handler
    summary: str
    role: str | None = "read"  # None: no authentication
    request_schema: str | None = None  # components/schemas name of the body
    response_status: int = 200
    tags: tuple[str, ...] = field(default_factory=tuple)
    query: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.rule}"

    @property
    def openapi_path(self) -> str:
        return self.rule.replace("<", "{").replace(">", "}")
