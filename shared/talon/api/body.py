"""Reading request bodies: size limit, content type, JSON or YAML, clear 4xx errors."""

from __future__ import annotations

from typing import Any

import flask

from talon.api.documents import Problem, load_json, load_yaml
from talon.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def read_raw(request: flask.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is {request.content_length} bytes; limit {limit}")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return data


def parse_body(
    request: flask.Request, limit: int, *, multi_document: bool = False, optional: bool = False
) -> Any:
    """Return the decoded body; YAML streams give a list when `multi_document`. An empty
    body is an error, or None when `optional`. What JSON cannot represent or PostgreSQL
    cannot store (NUL, lone surrogates, NaN, huge integers, deep nesting, duplicate keys) is
    a 400 naming its path (see documents.py)."""
    raw = read_raw(request, limit)
    if not raw.strip() and optional:
        return None
    if not raw.strip():
        raise BadRequest("request body is empty", [{"path": "(body)", "message": "required"}])
    mimetype = request.mimetype
    try:
        if mimetype in JSON_TYPES or mimetype.endswith("+json"):
            return load_json(raw)
        if mimetype in YAML_TYPES:
            return _one_or_many(load_yaml(raw), multi_document)
    except Problem as exc:
        raise BadRequest(exc.message, exc.details) from exc
    raise UnsupportedMediaType(
        f"unsupported content type {mimetype or '(none)'!r}; "
        "send application/json or application/yaml",
        [{"path": "Content-Type", "message": "must be application/json or application/yaml"}],
    )


def _one_or_many(documents: list[Any], multi_document: bool) -> Any:
    if multi_document:
        if len(documents) == 1 and isinstance(documents[0], list | dict):
            return documents[0]
        return documents
    if len(documents) != 1:
        raise BadRequest(
            "expected exactly one YAML document",
            [{"path": "(body)", "message": f"found {len(documents)} documents"}],
        )
    return documents[0]
