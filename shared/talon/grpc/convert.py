"""Manifests and API views (the dicts the HTTP API sends) to and from talon.v1 messages.

The messages mirror the JSON: field names are the JSON names in snake_case, so
google.protobuf.json_format maps them; free-form parts are google.protobuf.Struct, whose
numbers are doubles: whole numbers come back as ints.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
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


def to_plain(message: Message) -> dict[str, Any]:
    """A message as plain Python values under its proto field names, whatever they hold
    (NaN included: json_format refuses to write it), for talon.json_values.check."""
    return {field.name: _plain_field(field, value) for field, value in message.ListFields()}


def _plain_field(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _plain_single(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_plain_single(field, item) for item in value]
    return _plain_single(field, value)


def _plain_single(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is None:
        return value
    if isinstance(value, struct_pb2.Struct):
        return {key: _plain_value(item) for key, item in value.fields.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [_plain_value(item) for item in value.values]
    if isinstance(value, struct_pb2.Value):
        return _plain_value(value)
    return to_plain(value)


def _plain_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _plain_value(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain_value(item) for item in value.list_value.values]
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None
