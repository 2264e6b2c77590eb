"""The route table: one declaration feeds the werkzeug URL map, request parsing and the
OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flask

from talon.api.params import PATH, Param
from talon.auth.principal import Principal
from talon.errors import BadRequest
from talon.services import Services

Handler = Callable[..., Any]


@dataclass
class Context:
    request: flask.Request
    services: Services
    principal: Principal | None
    request_id: str
    # The route's declared query and header parameters, parsed (absent ones: their default).
    params: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> Any:
        """A declared parameter's value; an undeclared name is a programming error (it would
        be missing from the OpenAPI document), hence KeyError."""
        return self.params[name]


@dataclass(frozen=True)
class Answer:
    """A success answer a route documents: its status, media type and body schema (a
    components/schemas name, or an inline JSON schema)."""

    status: int
    schema: str | dict[str, Any]
    media_type: str = "application/json"
    description: str = "Success"


@dataclass(frozen=True)
class Route:
    method: str
    rule: str  # werkzeug syntax: /v1/ns/<ns>/agents/<name>
    handler: Handler
    summary: str
    role: str | None = "read"  # None: no authentication
    request_schema: str | None = None  # components/schemas name of the body
    tags: tuple[str, ...] = field(default_factory=tuple)
    query: tuple[Param, ...] = ()
    headers: tuple[Param, ...] = ()
    # Every success answer, for the OpenAPI document (which refuses a route without one);
    # the first is the status of a handler that returns only a body.
    answers: tuple[Answer, ...] = ()

    @property
    def response_status(self) -> int:
        return self.answers[0].status

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.rule}"

    @property
    def openapi_path(self) -> str:
        return self.rule.replace("<", "{").replace(">", "}")

    @property
    def path_params(self) -> tuple[Param, ...]:
        return tuple(PATH[name] for name in re.findall(r"<(\w+)>", self.rule))

    def check_path(self, args: Mapping[str, Any]) -> None:
        """Refuse path segments that cannot name anything (see params.py)."""
        for param in self.path_params:
            param.parse(args[param.name])

    def parse_params(self, request: flask.Request) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for param in self.query:
            given = request.args.getlist(param.name)
            if len(given) > 1:
                raise BadRequest(
                    f"query parameter {param.name} is given {len(given)} times",
                    [{"path": param.name, "message": "given more than once"}],
                )
            values[param.name] = param.parse(given[0] if given else None)
        for param in self.headers:
            values[param.name] = param.parse(request.headers.get(param.name))
        return values
