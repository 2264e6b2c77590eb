"""OpenAPI 3.1 document generated from the route table, the parameter declarations
(params.py) and the pydantic models: request bodies, every success answer and the error
answers each route can give."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from talon import __version__, errors
from talon.api.routing import Answer, Route
from talon.api.views import RESPONSE_MODELS
from talon.auth.tokens import TokenRequest
from talon.resources.registry import KINDS
from talon.sessions.models import CreateSession, PostMessage, Session

_ERROR_CODES = sorted(
    {cls.code for cls in vars(errors).values() if isinstance(cls, type)
     and issubclass(cls, errors.TalonError) and cls is not errors.ConfigError}
)  # fmt: skip
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "enum": _ERROR_CODES},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "description": "What is wrong where: a field path, a parameter or header "
                    "name, or (body), (path), (headers) for the whole.",
                    "items": {
                        "type": "object",
                        "required": ["path", "message"],
                        "additionalProperties": False,
                        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}
_ERROR_DESCRIPTIONS = {
    400: "Malformed request: body, path segment, query parameter or header (see details).",
    401: "Missing, unknown, expired or revoked bearer token.",
    403: "The token's role or tools do not allow this.",
    404: "No such object (or a namespace the token cannot see).",
    408: "The body did not arrive within gateway.bodyTimeoutSeconds of the first read.",
    409: "Conflict with the current state (see message).",
    413: "Body over gateway.maxBodyBytes.",
    415: "Body neither JSON nor YAML.",
    422: "Well-formed but invalid (see details).",
    431: "A header field over 8,190 bytes, or over 64 KiB of headers in all.",
    503: (
        "The database is unavailable, or (code busy, without a valid token) the instance "
        "is serving its limit of such requests; retry after Retry-After."
    ),
}


def build_openapi(routes: list[Route]) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (k.model, "validation") for k in KINDS
    ] + [
        (TokenRequest, "validation"),
        (CreateSession, "validation"),
        (PostMessage, "validation"),
        (Session, "validation"),
        *[(model, "validation") for model in RESPONSE_MODELS],
    ]
    _, schemas = models_json_schema(models, ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = dict(schemas.get("$defs", {}))
    components["Error"] = _ERROR_SCHEMA
    components["MergePatch"] = {"type": "object", "description": "RFC 7386 JSON merge patch."}
    components["ApplyRequest"] = {
        "description": "A list of manifests, {items: [...]}, or a multi-document YAML stream.",
        "oneOf": [
            {"type": "array", "items": {"type": "object"}},
            {"type": "object", "properties": {"items": {"type": "array"}}},
        ],
    }
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": _operation_id(route),
            "summary": route.summary,
            "tags": list(route.tags),
            "responses": {**_successes(route), **_errors(route)},
        }
        params = [p.openapi() for p in (*route.path_params, *route.query, *route.headers)]
        if params:
            operation["parameters"] = params
        if route.request_schema:
            ref = {"$ref": f"#/components/schemas/{route.request_schema}"}
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": ref},
                    "application/yaml": {"schema": ref},
                },
            }
        if route.role is None:
            operation["security"] = []
        else:
            operation["x-talon-role"] = route.role
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Talon gateway API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {
                _error_name(status): {
                    "description": description,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for status, description in _ERROR_DESCRIPTIONS.items()
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _schema(answer: Answer) -> dict[str, Any]:
    if isinstance(answer.schema, str):
        return {"$ref": f"#/components/schemas/{answer.schema}"}
    return answer.schema


def _successes(route: Route) -> dict[str, Any]:
    """Per status, each media type the route can answer it with (the first answer's
    description)."""
    if not route.answers:
        raise ValueError(f"{route.endpoint} documents no answer")
    successes: dict[str, Any] = {}
    for answer in route.answers:
        status = successes.setdefault(
            str(answer.status), {"description": answer.description, "content": {}}
        )
        status["content"][answer.media_type] = {"schema": _schema(answer)}
    return successes


def _errors(route: Route) -> dict[str, Any]:
    """The error statuses the route can answer, all with the Error body."""
    statuses = {400, 431, 503}  # any request: malformed, oversized headers, database down
    if route.role is not None:
        statuses |= {401, 403}
    if route.path_params or route.rule == "/v1/apply":  # apply: an item's namespace
        statuses.add(404)
    if route.request_schema:
        statuses |= {408, 413, 415, 422}
    if route.method != "GET":
        statuses |= {409, 422}
    documented = {a.status for a in route.answers}
    return {
        str(status): {"$ref": f"#/components/responses/{_error_name(status)}"}
        for status in sorted(statuses - documented)
    }


def _error_name(status: int) -> str:
    return f"Error{status}"


def _operation_id(route: Route) -> str:
    words = re.sub(r"<\w+>", "", route.rule).replace("/v1/", "").replace("-", "_")
    words = "_".join(w for w in words.split("/") if w)
    suffix = "_item" if route.rule.endswith(">") else ""
    alias = "_alias" if route.rule.startswith("/v1/namespaces/<ns>/") else ""
    return f"{route.method.lower()}_{words}{suffix}{alias}"
