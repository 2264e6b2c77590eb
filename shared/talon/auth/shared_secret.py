"""Shared secrets compared the way secrets must be: in constant time, on bytes.

`hmac.compare_digest` on `str` raises TypeError as soon as either side is not ASCII, so a
stray byte in a header used to be a 500. Everything here works on bytes, and a value that
arrives in a header is turned back into the bytes the client sent: WSGI and ASGI servers
hand header values over as Latin-1 text (PEP 3333; Starlette does the same), so encoding
them as Latin-1 is lossless.
"""

from __future__ import annotations

import hmac


def header_bytes(value: str | bytes) -> bytes:
    """The bytes a client sent in a header value, from the server's Latin-1 text."""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # not from a server's header parsing; still never a 500
        return value.encode("utf-8", "surrogatepass")


def text_bytes(value: str) -> bytes:
    """A configured secret or a JSON string as UTF-8; `surrogatepass` because JSON may
    carry lone surrogates (`"\\ud800"`), which plain UTF-8 encoding refuses."""
    return value.encode("utf-8", "surrogatepass")


def same_secret(given: bytes, expected: bytes) -> bool:
    """True when `given` is the (non-empty) expected secret; constant time in `given`."""
    return bool(expected) and hmac.compare_digest(given, expected)
