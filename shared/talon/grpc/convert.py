"""Manifests and API views (the dicts the HTTP API sends) to and from talon.v1 messages.

The messages mirror the JSON: field names are the JSON names in snake_case, so
google.protobuf.json_format maps them; free-form parts are google.protobuf.Struct, whose
numbers are doubles: whole numbers come back as ints.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def to_message(data: dict[str, Any], message: type[M]) -> M:
    """A view or manifest as `message`; fields it does not have are an error (a view that
    grew a field must grow the .proto too)."""
    return json_format.ParseDict(data, message())


def to_struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return dict(whole_numbers(json_format.MessageToDict(struct)))


def to_manifest(message: Message) -> dict[str, Any]:
    """A resource message as the manifest the core validates (unset fields left out)."""
    manifest = whole_numbers(json_format.MessageToDict(message))
    metadata = manifest.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("generation"), str):
        metadata["generation"] = int(metadata["generation"])  # int64 travels as a string
    return dict(manifest)


def whole_numbers(value: Any) -> Any:
    """Struct's doubles that are whole numbers as ints, everywhere inside `value`."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    return value
