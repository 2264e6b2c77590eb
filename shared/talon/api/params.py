"""Request parameters (path, query, header), each declared once: the gateway parses requests
with these declarations and the OpenAPI document is built from the same ones, so the two
cannot drift apart.

Parsing is strict on purpose. A value reaches SQL as a parameter, so a NUL (PostgreSQL text
cannot hold it) or an out-of-range integer (bigint) would otherwise surface as a 500 from the
database; a pattern that can never match anything stored is better refused with the name of
the parameter than answered with a misleading 404.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from talon.errors import BadRequest
from talon.resources.kinds import SESSION_ID_RE
from talon.resources.service import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from talon.sessions.usage import RFC3339

INT64_MAX = 2**63 - 1  # PostgreSQL bigint: event ids, sequence numbers
# ASCII digits only (int() also takes "1_0", " 1" and other scripts' digits), and few enough
# that int() never meets its 4,300-digit limit.
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_TRUE, _FALSE = ("true", "1"), ("false", "0", "")


@dataclass(frozen=True)
class Param:
    name: str
    location: Literal["path", "query", "header"]
    type: Literal["integer", "boolean", "string"]
    description: str
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None  # strings must match it whole (ECMA-262 and Python alike)
    max_length: int | None = None
    expects: str = ""  # the pattern in words, for error messages
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_compiled", re.compile(self.pattern))

    def parse(self, raw: str | None) -> Any:
        """The typed value of `raw` (None: absent, so the default); BadRequest names the
        parameter when it does not fit its declaration."""
        if raw is None or (raw == "" and self.type != "string"):
            return self.default
        if self.type == "integer":
            value = int(raw) if _INTEGER.fullmatch(raw) else None
            low = self.minimum if self.minimum is not None else -INT64_MAX
            high = self.maximum if self.maximum is not None else INT64_MAX
            if value is None or not low <= value <= high:
                self._fail(f"must be an integer from {low} to {high}")
            return value
        if self.type == "boolean":
            lowered = raw.lower()
            if lowered not in _TRUE + _FALSE:
                self._fail("must be true or false")
            return lowered in _TRUE
        if self.max_length is not None and len(raw) > self.max_length:
            self._fail(f"must be at most {self.max_length} characters")
        if self._compiled is not None and not self._compiled.fullmatch(raw):
            self._fail(f"must be {self.expects}" if self.expects else "has an invalid format")
        return raw

    def _fail(self, message: str) -> None:
        where = {"path": "path parameter", "query": "query parameter", "header": "header"}
        raise BadRequest(
            f"{where[self.location]} {self.name} {message}",
            [{"path": self.name, "message": message}],
        )

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type}
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("pattern", self.pattern and f"^(?:{self.pattern})$"),
            ("maxLength", self.max_length),
            ("default", self.default),
        ):
            if value is not None:
                schema[key] = value
        return schema

    def openapi(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.location,
            "required": self.location == "path",
            "description": self.description,
            "schema": self.schema(),
        }


_DNS_LABEL = "[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_DNS_EXPECTS = "a DNS label (lowercase letters, digits and '-', at most 63 characters)"


def _name(name: str, what: str) -> Param:
    return Param(name, "path", "string", what, pattern=_DNS_LABEL, expects=_DNS_EXPECTS)


# Path parameters by the name the route rules use (`<ns>`); patterns are what the resource
# models and services enforce when the thing is created, so nothing else can exist.
PATH: dict[str, Param] = {
    "ns": _name("ns", "Namespace name."),
    "name": _name("name", "Resource name."),
    "agent": _name("agent", "Agent name."),
    "session_id": Param(
        "session_id",
        "path",
        "string",
        "Session id.",
        pattern=SESSION_ID_RE.strip("^$"),
        expects="1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
    ),
    "turn_id": Param(
        "turn_id",
        "path",
        "string",
        "Turn id (a UUID, from turnId).",
        pattern="[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        expects="a lowercase UUID",
    ),
    "token_id": Param(
        "token_id",
        "path",
        "string",
        "Token id (not the secret).",
        pattern="[a-z0-9_-]{1,64}",
        expects="a token id such as tok_0123456789abcdef",
    ),
}

# Query parameters and headers, shared by the routes that take them.
LIMIT = Param(
    "limit",
    "query",
    "integer",
    f"Page size (default {DEFAULT_PAGE_SIZE}).",
    default=DEFAULT_PAGE_SIZE,
    minimum=1,
    maximum=MAX_PAGE_SIZE,
)
FIRES_LIMIT = Param(
    "limit",
    "query",
    "integer",
    "How many fires, newest first (default 10).",
    default=10,
    minimum=1,
    maximum=100,
)
PAGE_TOKEN = Param(
    "pageToken",
    "query",
    "string",
    "nextPageToken of the previous page.",
    pattern="[A-Za-z0-9._~=-]{1,512}",
    expects="a nextPageToken from this API",
)
LABEL_SELECTOR = Param(
    "labelSelector",
    "query",
    "string",
    "Comma-separated `k=v`, `k!=v`, `k`, `!k` requirements.",
    pattern="[^\\u0000-\\u001f\\u007f]*",
    max_length=4096,
    expects="a label selector without control characters",
)
DRY_RUN = Param(
    "dryRun", "query", "boolean", "Validate and report, but change nothing.", default=False
)
AFTER = Param(
    "after",
    "query",
    "integer",
    "Only messages after this seq.",
    default=0,
    minimum=0,
    maximum=INT64_MAX,
)
LAST_EVENT_ID_QUERY = Param(
    "lastEventId",
    "query",
    "integer",
    "Replay events after this id (0: all). For clients that cannot send the Last-Event-ID "
    "header on their first request (a browser's EventSource); the header wins when both are "
    "given, as it does on an EventSource's reconnect.",
    minimum=0,
    maximum=INT64_MAX,
)
LAST_EVENT_ID_HEADER = Param(
    "Last-Event-ID",
    "header",
    "integer",
    "Replay events after this id (0: all); without it (and without lastEventId) only new "
    "events are sent. Takes precedence over the lastEventId query parameter.",
    minimum=0,
    maximum=INT64_MAX,
)
UNTIL_TURN_END = Param(
    "untilTurnEnd",
    "query",
    "boolean",
    "End the stream once no turn is queued or running.",
    default=False,
)
MAX_SECONDS = Param(
    "maxSeconds",
    "query",
    "integer",
    "End the stream after this long (default 600); resume with Last-Event-ID.",
    default=600,
    minimum=1,
    maximum=3600,
)
HEARTBEAT = Param(
    "heartbeat",
    "query",
    "integer",
    "Seconds between keep-alive comments (default 15).",
    default=15,
    minimum=1,
    maximum=60,
)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    "string",
    "Makes retries safe: the same key with the same body answers the first request's turn "
    "(200) without queueing another; the same key with another body is refused (422).",
    pattern="[\\u0020-\\u007e]{1,200}",
    expects="1 to 200 printable ASCII characters",
)
_RFC3339_EXPECTS = "an RFC 3339 date-time with an offset, e.g. 2026-11-01T00:00:00Z"
SINCE = Param(
    "since",
    "query",
    "string",
    "Start of the time range, inclusive (RFC 3339; default: 30 days before `until`).",
    pattern=RFC3339,
    expects=_RFC3339_EXPECTS,
)
UNTIL = Param(
    "until",
    "query",
    "string",
    "End of the time range, exclusive (RFC 3339; default: now).",
    pattern=RFC3339,
    expects=_RFC3339_EXPECTS,
)
USAGE_GROUP_BY = Param(
    "groupBy",
    "query",
    "string",
    "Also sum per agent, session, turn, profile, provider, model or UTC day (YYYY-MM-DD).",
    pattern="agent|session|turn|profile|provider|model|day",
    expects="one of agent, session, turn, profile, provider, model, day",
)
