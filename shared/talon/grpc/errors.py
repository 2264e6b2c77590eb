"""Talon's errors as gRPC statuses, with google.rpc details that name the field.

Every status carries an ErrorInfo (reason: Talon's stable error code, upper case; domain
talon.dev). Invalid input adds a BadRequest with one field violation per problem; a conflict
adds a PreconditionFailure; the field paths are the request's (`agent.metadata.name`).
"""

from __future__ import annotations

import re

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from talon.errors import AlreadyExists, TalonError

DOMAIN = "talon.dev"
_CODES = {
    "bad_request": code_pb2.INVALID_ARGUMENT,
    "invalid": code_pb2.INVALID_ARGUMENT,
    "unauthenticated": code_pb2.UNAUTHENTICATED,
    "permission_denied": code_pb2.PERMISSION_DENIED,
    "not_found": code_pb2.NOT_FOUND,
    "method_not_allowed": code_pb2.UNIMPLEMENTED,
    "request_timeout": code_pb2.DEADLINE_EXCEEDED,
    "conflict": code_pb2.FAILED_PRECONDITION,
    "payload_too_large": code_pb2.RESOURCE_EXHAUSTED,
    "unsupported_media_type": code_pb2.INVALID_ARGUMENT,
    "headers_too_large": code_pb2.INVALID_ARGUMENT,
    "unavailable": code_pb2.UNAVAILABLE,
    "busy": code_pb2.UNAVAILABLE,
    "too_many_streams": code_pb2.RESOURCE_EXHAUSTED,
}
_PRECONDITIONS = {code_pb2.FAILED_PRECONDITION, code_pb2.ALREADY_EXISTS, code_pb2.ABORTED}
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
# Manifest envelope fields whose JSON names differ from the proto field names; what is under
# spec, definition or status is free-form (a Struct) and keeps its names.
_ENVELOPE = frozenset({"apiVersion", "resourceVersion", "creationTimestamp", "updateTimestamp"})


def code_of(exc: TalonError) -> int:
    if isinstance(exc, AlreadyExists):
        return code_pb2.ALREADY_EXISTS
    if exc.code == "conflict" and any(d.get("message") == "stale" for d in exc.details):
        return code_pb2.ABORTED  # a read-modify-write lost a race: read again and retry
    return _CODES.get(exc.code, code_pb2.INTERNAL)


def field_path(path: str, prefix: str = "") -> str:
    """A manifest path (`metadata.resourceVersion`) as the request's field path
    (`agent.metadata.resource_version`)."""
    if path in ("(root)", "(body)", ""):
        return prefix.rstrip(".") or path
    parts = path.split(".")
    for index, part in enumerate(parts):
        if part in {"spec", "definition", "status", "labels", "annotations"}:
            break
        if part in _ENVELOPE:
            parts[index] = _CAMEL.sub(r"_\1", part).lower()
    return prefix + ".".join(parts)


def to_status(
    exc: TalonError, prefix: str = "", rename: dict[str, str] | None = None
) -> grpc.Status:
    """The status for `exc`; detail paths get `prefix` (the request field holding the
    manifest) and their first segment renamed by `rename` (a body field -> the request's)."""
    code = code_of(exc)
    paths = [_renamed(field_path(d.get("path", ""), prefix), rename or {}) for d in exc.details]
    details = [error_details_pb2.ErrorInfo(reason=exc.code.upper(), domain=DOMAIN)]
    if code == code_pb2.INVALID_ARGUMENT:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=path, description=d["message"])
            for path, d in zip(paths, exc.details, strict=True)
        ]))  # fmt: skip
    elif code in _PRECONDITIONS and exc.details:
        details.append(error_details_pb2.PreconditionFailure(violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type=exc.code.upper(), subject=path, description=d["message"])
            for path, d in zip(paths, exc.details, strict=True)
        ]))  # fmt: skip
    elif exc.details:
        details[0].metadata["field"] = paths[0]
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=code, message=exc.message, details=packed)
    return rpc_status.to_status(status)


def _renamed(path: str, rename: dict[str, str]) -> str:
    head = re.match(r"[^.\[]*", path)
    first = head.group(0) if head else ""
    return rename[first] + path[len(first) :] if first in rename else path
