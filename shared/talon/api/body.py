"""Reading request bodies: size limit, content type, JSON or YAML, clear 4xx errors."""

from __future__ import annotations

import json
from typing import Any

import flask
import yaml

from talon.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases, which would let a small body expand enormously."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


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
    body is an error, or None when `optional`."""
    body = _decode(request, limit, multi_document=multi_document, optional=optional)
    _reject_nul(body, "")
    return body


def _reject_nul(value: Any, path: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it here, naming where it is,
    instead of failing at the database."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest(
                f"{path or '(body)'}: contains a NUL character",
                [{"path": path or "(body)", "message": "NUL characters (U+0000) are not accepted"}],
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            _reject_nul(key, child)
            _reject_nul(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_nul(item, f"{path}[{index}]")


def _decode(request: flask.Request, limit: int, *, multi_document: bool, optional: bool) -> Any:
    raw = read_raw(request, limit)
    if not raw.strip() and optional:
        return None
    if not raw.strip():
        raise BadRequest("request body is empty", [{"path": "(body)", "message": "required"}])
    mimetype = request.mimetype
    if mimetype in JSON_TYPES or mimetype.endswith("+json"):
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(
                f"malformed JSON: {exc}", [{"path": "(body)", "message": str(exc)}]
            ) from exc
    if mimetype in YAML_TYPES:
        try:
            text = raw.decode()
            documents = [d for d in yaml.load_all(text, Loader=_NoAliasLoader) if d is not None]
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            message = str(exc).replace("\n", " ")
            raise BadRequest(
                f"malformed YAML: {message}", [{"path": "(body)", "message": message}]
            ) from exc
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
    raise UnsupportedMediaType(
        f"unsupported content type {mimetype or '(none)'!r}; "
        "send application/json or application/yaml",
        [{"path": "Content-Type", "message": "must be application/json or application/yaml"}],
    )
