"""Request heads (request line + headers) as Talon's server collects them before any thread
parses them, and the answers it gives when one never completes."""

from __future__ import annotations

import json
import re
import uuid

# Where a head ends: an empty line. A bare LF is accepted here so that gunicorn's parser,
# not this scan, decides about such requests.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# More than this without an empty line is refused (431): Talon refuses over 64 KiB of
# headers anyway (api/transport.py), and the request line is part of the head too.
MAX_HEAD_BYTES = 128 * 1024
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


def head_complete(buffer: bytes | bytearray, scanned: int) -> bool:
    """Whether `buffer` holds a whole head; the first `scanned` bytes were already looked
    at (bar the last three, which may be the start of the empty line). Empty lines before
    the request line (RFC 9112 2.2 lets a server ignore them) do not end a head: a client
    sending them first would otherwise get a thread to hold with the rest."""
    start = len(buffer) - len(buffer.lstrip(b"\r\n"))
    if start == len(buffer):
        return False
    return _HEAD_END.search(buffer, max(start, scanned - 3)) is not None


def refusal(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer, JSON like the gateway's, after which the connection closes."""
    body = (
        json.dumps(
            {"error": {"code": code, "message": message, "details": []}}, separators=(",", ":")
        ).encode()
        + b"\n"
    )
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-Id: {uuid.uuid4().hex}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body
