"""Token usage as the API and talon-ops show it: the sums of a namespace, an agent, a session or
a turn over a time range, optionally grouped (by agent, session, turn, profile, provider, model
or UTC day), and the hook that forgets a deleted namespace's usage."""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from talon.errors import BadRequest
from talon.store import model_usage
from talon.store.database import Tx
from talon.store.model_usage import GROUPS, Scope, Window
from talon.store.resources import Record

GROUP_NAMES = tuple(GROUPS)
DEFAULT_RANGE = timedelta(days=30)
# RFC 3339 with an offset, at most microseconds (what fromisoformat reads; it then rejects a
# 13th month or a 25th hour). The API's since/until parameters declare the same pattern.
RFC3339 = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_RFC3339 = re.compile(RFC3339)


def window(since: str | None, until: str | None) -> Window:
    """[since, until) from RFC 3339 texts: `until` defaults to now, `since` to 30 days before
    it. BadRequest names the parameter that is wrong."""
    end = _moment("until", until) or datetime.now(UTC)
    start = _moment("since", since) or end - DEFAULT_RANGE
    if start >= end:
        raise BadRequest.at("since", "must be before until")
    return Window(start, end)


def _moment(name: str, raw: str | None) -> datetime | None:
    if raw is None:
        return None
    moment = None
    if _RFC3339.fullmatch(raw):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(raw.upper()).astimezone(UTC)
    if moment is None:
        raise BadRequest.at(
            name, "must be an RFC 3339 date-time with an offset, e.g. 2026-11-01T00:00:00Z"
        )
    return moment


@dataclass(frozen=True)
class UsageQuery:
    window: Window
    group_by: str | None = None
    page_token: str | None = None  # a nextPageToken of the same query
    limit: int = 100


def usage_view(tx: Tx, scope: Scope, query: UsageQuery) -> dict[str, Any]:
    """`{since, until, total, [groupBy, groups, nextPageToken]}` for `scope`."""
    view: dict[str, Any] = {
        "since": _iso(query.window.since),
        "until": _iso(query.window.until),
        "total": model_usage.total(tx, scope, query.window),
    }
    if query.group_by is not None:
        if query.group_by not in GROUPS:
            raise BadRequest.at("groupBy", f"must be one of {', '.join(GROUP_NAMES)}")
        after = _decode(query.page_token, query.group_by)
        found, last = model_usage.groups(
            tx, scope, query.window, by=query.group_by, after=after, limit=query.limit
        )
        view["groupBy"] = query.group_by
        view["groups"] = [{"key": key, **sums} for key, sums in found]
        view["nextPageToken"] = None if last is None else _encode(last)
    return view


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _encode(key: Any) -> str:
    # Keys are names, model ids or turn numbers: any text, so the token is base64url.
    return base64.urlsafe_b64encode(str(key).encode()).decode()


def _decode(token: str | None, group_by: str) -> str | None:
    if token is None:
        return None
    try:
        key = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = None
    # A turn key is a number (its SQL comparison casts it); any other key is text, never NUL.
    valid = key is not None and "\x00" not in key
    if valid and GROUPS[group_by][1] == "bigint":
        valid = key is not None and key.isascii() and key.isdigit() and len(key) <= 18
    if not valid:
        raise BadRequest.at("pageToken", "must be a nextPageToken of this query")
    return key


class NamespaceUsageHook:
    """A deleted namespace's usage goes with it: a namespace created later under the same
    name starts from nothing."""

    kinds: tuple[str, ...] = ("Namespace",)

    def written(self, tx: Tx, record: Record, *, created: bool) -> None:
        pass

    def deleted(self, tx: Tx, record: Record) -> None:
        model_usage.forget_namespace(tx, record.name)
