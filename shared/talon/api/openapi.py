"""OpenAPI 3.1 document generated from the route table and the pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic.json_schema import models_json_schema

from talon import __version__
from talon.api.routing import Route
from talon.auth.tokens import TokenRequest
from talon.resources.registry import KINDS
from talon.sessions.models import CreateSession, PostMessage, Session

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}


def build_openapi(routes: list[Route]) -> dict[str, Any]:
    models = [(k.model, "validation") for k in KINDS] + [
        (TokenRequest, "validation"),
        (CreateSession, "validation"),
        (PostMessage, "validation"),
        (Session, "serialization"),
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
            "responses": {
                str(route.response_status): {
                    "description": "Success",
                    "content": {"application/json": {}},
                },
                "default": {
                    "description": "Error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
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
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _operation_id(route: Route) -> str:
    words = re.sub(r"<\w+>", "", route.rule).replace("/v1/", "").replace("-", "_")
    words = "_".join(w for w in words.split("/") if w)
    suffix = "_item" if route.rule.endswith(">") else ""
    alias = "_alias" if route.rule.startswith("/v1/namespaces/<ns>/") else ""
    return f"{route.method.lower()}_{words}{suffix}{alias}"
