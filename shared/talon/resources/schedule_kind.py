"""The Schedule kind: wake an agent's session with a message on cron or once, in a time zone.
Its fields are checked here as far as a manifest can be (a cron expression that matches no
date, a time zone that is not an IANA key, an `at` outside what the schedulers can handle)."""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime
from typing import Annotated, Literal

from croniter import croniter
from pydantic import (
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from talon.resources.kinds import SessionId
from talon.resources.meta import DnsLabel, Resource, StrictModel
from talon.scheduling.cron import next_fire
from talon.scheduling.timing import once_instant

_ZONE_KEY = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,3}")
_ZONE_KEY_MAX = 64  # the longest IANA key has 32 characters
_CRON_PROBE = datetime(2000, 1, 1, tzinfo=UTC)
# A `once` time must survive arithmetic (catch-up windows, Cloud Tasks legs, protobuf
# timestamps) without overflowing; nothing useful lies outside this range.
_AT_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_AT_LATEST = datetime(9999, 1, 1, tzinfo=UTC)
_AT_SCHEMA = {
    "type": "string",
    "description": "ISO 8601 date and time. Without a UTC offset it is a wall time in "
    "`timezone` (kept as written, so a later `timezone` change moves the fire).",
}


class ScheduleTarget(StrictModel):
    agent: DnsLabel
    sessionMode: Literal["named", "new"] = "named"
    sessionId: SessionId | None = None

    @model_validator(mode="after")
    def _session_mode(self) -> ScheduleTarget:
        if self.sessionMode == "named" and not self.sessionId:
            raise ValueError("sessionMode 'named' needs sessionId")
        if self.sessionMode == "new" and self.sessionId:
            raise ValueError("sessionMode 'new' takes no sessionId")
        return self


class ScheduleSpec(StrictModel):
    kind: Literal["cron", "once"] = "cron"
    cron: str | None = None
    # Before `at`: reading an `at` without a UTC offset needs the zone (validated in order).
    timezone: str = "UTC"
    at: Annotated[datetime, WithJsonSchema(_AT_SCHEMA)] | None = None
    target: ScheduleTarget
    inputMessage: Annotated[str, StringConstraints(min_length=1, max_length=32_768)]
    enabled: bool = True
    missedFirePolicy: Literal["fireOnce", "skip"] = "fireOnce"

    @field_validator("cron")
    @classmethod
    def _cron_syntax(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value.split()) != 5:
            raise ValueError("must have 5 fields: minute hour day-of-month month day-of-week")
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        # Valid syntax can still match no date at all (`0 0 30 2 *`); the scheduler would
        # then fail on every next-fire computation. Cron has no year, so an expression that
        # fires once from a fixed instant fires forever (and the answer is cached).
        try:
            next_fire(value, "UTC", _CRON_PROBE)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"{value!r} never fires (no date matches it)") from exc
        return value

    @field_validator("timezone")
    @classmethod
    def _iana_timezone(cls, value: str) -> str:
        # The key becomes a file path inside tzdata: bound it before asking (a long one is
        # an OSError, a directory name IsADirectoryError).
        try:
            if len(value) > _ZONE_KEY_MAX or not _ZONE_KEY.fullmatch(value):
                raise ValueError
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
            shown = value if len(value) <= _ZONE_KEY_MAX else f"{value[:_ZONE_KEY_MAX]}..."
            raise ValueError(f"{shown!r} is not an IANA time zone") from exc
        return value

    @field_validator("at")
    @classmethod
    def _at_in_range(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        timezone = info.data.get("timezone")
        if value is None or timezone is None:
            return value  # no zone: its own error is reported
        try:
            instant = once_instant(value, timezone)
        except OverflowError:
            instant = None
        if instant is None or not _AT_EARLIEST <= instant < _AT_LATEST:
            raise ValueError(
                f"must be from {_AT_EARLIEST:%Y-%m-%d} to before {_AT_LATEST:%Y-%m-%d} (UTC)"
            )
        return value

    @field_validator("inputMessage")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> ScheduleSpec:
        if self.kind == "cron" and (self.cron is None or self.at is not None):
            raise ValueError("kind 'cron' needs 'cron' and takes no 'at'")
        if self.kind == "once" and (self.at is None or self.cron is not None):
            raise ValueError("kind 'once' needs 'at' and takes no 'cron'")
        return self


class Schedule(Resource):
    KIND = "Schedule"
    kind: Literal["Schedule"] = "Schedule"
    spec: ScheduleSpec

    def references(self) -> list[tuple[str, str, str]]:
        return [("Agent", self.spec.target.agent, "spec.target.agent")]
