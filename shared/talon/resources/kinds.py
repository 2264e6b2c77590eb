"""Spec models of every resource kind, in the manifest shapes of the seed."""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from croniter import croniter
from pydantic import (
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from talon.errors import Invalid
from talon.resources.meta import DnsLabel, LabelKey, LabelValue, NonBlank, Resource, StrictModel
from talon.scheduling.cron import next_fire
from talon.scheduling.timing import once_instant

IDENTIFIER_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
SESSION_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HEADER_NAME_RE = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
MAX_KNOWLEDGE_BYTES = 512 * 1024
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

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_RE, max_length=64)]
SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_RE)]


def _unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)
    return values


# --- secrets ---------------------------------------------------------------------------------


class SecretRef(StrictModel):
    """Where a secret value lives. Values themselves are never stored in the database."""

    env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    secret: (
        Annotated[
            str,
            StringConstraints(pattern=r"^projects/[^/]+/secrets/[^/]+(/versions/[^/]+)?$"),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.secret is None):
            raise ValueError("set exactly one of 'env' or 'secret'")
        return self


# --- Namespace -------------------------------------------------------------------------------


class NamespaceSpec(StrictModel):
    description: str = ""


class Namespace(Resource):
    KIND = "Namespace"
    kind: Literal["Namespace"] = "Namespace"
    spec: NamespaceSpec = NamespaceSpec()


# --- AgentTemplate ---------------------------------------------------------------------------

FeatureType = Literal["string", "integer", "number", "boolean"]
_FEATURE_CHECKS: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def feature_value_matches(type_name: str, value: Any) -> bool:
    return bool(_FEATURE_CHECKS[type_name](value))


class FeatureDecl(StrictModel):
    name: Identifier
    type: FeatureType = "string"
    required: bool = False
    default: str | int | float | bool | None = None
    description: str = ""

    @model_validator(mode="after")
    def _default_matches_type(self) -> FeatureDecl:
        if self.default is not None and not feature_value_matches(self.type, self.default):
            raise ValueError(f"default must be of type {self.type}")
        return self


class CustomSpec(StrictModel):
    features: list[FeatureDecl] = Field(default_factory=list)

    @field_validator("features")
    @classmethod
    def _unique_features(cls, value: list[FeatureDecl]) -> list[FeatureDecl]:
        _unique([f.name for f in value], "feature")
        return value


class ModelSpec(StrictModel):
    provider: Literal["openai", "demo"]
    name: NonBlank
    temperature: float | None = Field(default=None, ge=0, le=2)
    maxTokens: int | None = Field(default=None, ge=1)
    baseUrl: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")] | None = None
    apiKeyFrom: SecretRef | None = None


class ModelProfile(StrictModel):
    name: DnsLabel
    model: ModelSpec


class RetryPolicy(StrictModel):
    maxAttempts: int = Field(default=3, ge=1, le=10)
    initialBackoffSeconds: float = Field(default=0.5, gt=0, le=60)
    maxBackoffSeconds: float = Field(default=8.0, gt=0, le=600)


class ModelPolicy(StrictModel):
    profiles: list[ModelProfile] = Field(min_length=1)
    retry: RetryPolicy = RetryPolicy()
    turnTimeoutSeconds: float = Field(default=300.0, gt=0, le=3600)

    @field_validator("profiles")
    @classmethod
    def _unique_profiles(cls, value: list[ModelProfile]) -> list[ModelProfile]:
        _unique([p.name for p in value], "profile")
        return value


SkillName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")]


class TemplateDefinition(StrictModel):
    customSpec: CustomSpec = CustomSpec()
    modelPolicy: ModelPolicy
    systemPrompt: str = ""
    mcpServerRefs: list[DnsLabel] = Field(default_factory=list)
    skills: list[SkillName] = Field(default_factory=list)

    @field_validator("mcpServerRefs")
    @classmethod
    def _unique_refs(cls, value: list[str]) -> list[str]:
        return _unique(value, "server")

    @field_validator("skills")
    @classmethod
    def _unique_skills(cls, value: list[str]) -> list[str]:
        return _unique(value, "skill")


class AgentTemplate(Resource):
    KIND = "AgentTemplate"
    BODY_FIELD = "definition"
    kind: Literal["AgentTemplate"] = "AgentTemplate"
    definition: TemplateDefinition

    def references(self) -> list[tuple[str, str, str]]:
        return [
            ("MCPServer", ref, f"definition.mcpServerRefs[{i}]")
            for i, ref in enumerate(self.definition.mcpServerRefs)
        ]


# --- Agent -----------------------------------------------------------------------------------


class AgentOverrides(StrictModel):
    modelPolicy: ModelPolicy | None = None
    systemPrompt: str | None = None
    mcpServerRefs: list[DnsLabel] | None = None
    skills: list[SkillName] | None = None


class AgentSpec(StrictModel):
    templateRef: DnsLabel
    features: dict[Identifier, str | int | float | bool] = Field(default_factory=dict)
    overrides: AgentOverrides = AgentOverrides()


class Agent(Resource):
    KIND = "Agent"
    kind: Literal["Agent"] = "Agent"
    spec: AgentSpec

    def references(self) -> list[tuple[str, str, str]]:
        refs = [("AgentTemplate", self.spec.templateRef, "spec.templateRef")]
        refs += [
            ("MCPServer", ref, f"spec.overrides.mcpServerRefs[{i}]")
            for i, ref in enumerate(self.spec.overrides.mcpServerRefs or [])
        ]
        return refs


# --- Schedule --------------------------------------------------------------------------------


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


# --- Knowledge -------------------------------------------------------------------------------


class KnowledgeSpec(StrictModel):
    title: str = ""
    contentType: Literal["text/markdown", "text/plain"] = "text/markdown"
    content: NonBlank
    source: str = ""

    @field_validator("content")
    @classmethod
    def _size_limit(cls, value: str) -> str:
        size = len(value.encode())
        if size > MAX_KNOWLEDGE_BYTES:
            raise ValueError(f"is {size} bytes; the limit is {MAX_KNOWLEDGE_BYTES}")
        return value


class Knowledge(Resource):
    KIND = "Knowledge"
    kind: Literal["Knowledge"] = "Knowledge"
    spec: KnowledgeSpec


# --- MCPServer / MCPBinding ------------------------------------------------------------------


class HeaderFromSecret(StrictModel):
    name: Annotated[str, StringConstraints(pattern=HEADER_NAME_RE)]
    valueFrom: SecretRef


class MCPServerSpec(StrictModel):
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
    transport: Literal["streamable-http"] = "streamable-http"
    headers: list[HeaderFromSecret] = Field(default_factory=list)
    timeoutSeconds: float = Field(default=30.0, gt=0, le=600)
    description: str = ""


# Tool names are `<server>.<tool>`; these prefixes belong to built-ins and skills.
RESERVED_SERVER_NAMES = frozenset({"talon", "skill"})


class MCPServer(Resource):
    KIND = "MCPServer"
    kind: Literal["MCPServer"] = "MCPServer"
    spec: MCPServerSpec

    @model_validator(mode="after")
    def _not_reserved(self) -> MCPServer:
        if self.metadata.name in RESERVED_SERVER_NAMES:
            name = self.metadata.name
            message = f"{name!r} is reserved: tools named '{name}.*' belong to Talon"
            # Raised as is (not a ValueError), so the error names the field, not the root.
            raise Invalid(f"invalid MCPServer: metadata.name: {message}",
                          [{"path": "metadata.name", "message": message}])  # fmt: skip
        return self


class LabelSelector(StrictModel):
    matchLabels: dict[LabelKey, LabelValue] = Field(default_factory=dict)


class BindingSubjects(StrictModel):
    names: list[DnsLabel] = Field(default_factory=list)
    selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _some_subject(self) -> BindingSubjects:
        if not self.names and self.selector is None:
            raise ValueError("set 'names' or 'selector' (an empty selector matches every agent)")
        return self


ToolPattern = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ToolPolicy(StrictModel):
    # Glob patterns over the server's tool names; no `allow` means every tool not denied.
    allow: list[ToolPattern] | None = None
    deny: list[ToolPattern] = Field(default_factory=list)


class MCPBindingSpec(StrictModel):
    server: DnsLabel
    agents: BindingSubjects
    tools: ToolPolicy = ToolPolicy()
    readOnly: bool = True


class MCPBinding(Resource):
    KIND = "MCPBinding"
    kind: Literal["MCPBinding"] = "MCPBinding"
    spec: MCPBindingSpec

    def references(self) -> list[tuple[str, str, str]]:
        return [("MCPServer", self.spec.server, "spec.server")]
