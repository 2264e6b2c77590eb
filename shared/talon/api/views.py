"""The shapes of the gateway's success answers, for the OpenAPI document.

Where a domain model already describes an answer (resource manifests, sessions) the document
uses it; these cover the views the services build as plain dicts. They document; they are not
run on every response (the hot paths answer in a few milliseconds). The fuzz and scenario
tests hold the two together: every answer is validated against the document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from talon.resources.meta import StrictModel
from talon.sessions.models import Session

Timestamp = str  # RFC 3339, UTC, e.g. 2026-11-30T15:24:45.899103Z


class Health(StrictModel):
    status: Literal["ok", "unavailable"]
    database: str | None = Field(default=None, description="Why, when unavailable.")


class Whoami(StrictModel):
    tokenId: str
    name: str
    role: Literal["admin", "write", "read"]
    namespaces: list[str] = Field(description='Namespace names, or ["*"] for all.')
    tools: list[str] | None


class TokenView(StrictModel):
    id: str
    name: str
    role: Literal["admin", "write", "read"]
    namespaces: list[str] = Field(description='Namespace names, or ["*"] for all.')
    tools: list[str] | None
    createdBy: str | None
    createdAt: Timestamp
    expiresAt: Timestamp | None
    revokedAt: Timestamp | None


class CreatedToken(TokenView):
    token: str = Field(description="The secret: shown this once, stored only as a hash.")


class TokenList(StrictModel):
    items: list[TokenView]
    nextPageToken: str | None


class ApplyItem(StrictModel):
    kind: str
    namespace: str | None
    name: str
    action: Literal["created", "configured", "unchanged"]
    resourceVersion: str
    object: dict[str, Any] = Field(description="The manifest as stored (see its kind).")


class ApplyResult(StrictModel):
    dryRun: bool
    items: list[ApplyItem]


class MessageView(StrictModel):
    seq: int
    role: Literal["user", "assistant", "tool", "system"]
    content: str
    toolCalls: list[dict[str, Any]] | None = None
    toolCallId: str | None = None
    turnId: str | None
    createdAt: Timestamp


class MessageList(StrictModel):
    items: list[MessageView]
    nextAfter: int | None = Field(description="`after` for the next page; null: no more.")


class SessionList(StrictModel):
    items: list[Session] = Field(description="Summaries: without messages and stream.")
    nextPageToken: str | None


TurnState = Literal["queued", "running", "completed", "failed", "cancelled"]


class Accepted(StrictModel):
    turnId: str
    messageSeq: int
    state: TurnState = Field(
        description="queued (202); on an Idempotency-Key replay (200), the turn's state now."
    )
    streamFrom: int = Field(description="Stream with Last-Event-ID = this to see the turn.")


class Cancelled(StrictModel):
    cancelled: list[str] = Field(description="Ids of the turns cancelled.")


class StepView(StrictModel):
    index: int
    name: str
    kind: str
    state: Literal["started", "completed", "failed"]
    startedAt: Timestamp
    completedAt: Timestamp | None
    # A tool step's call, as its step events carry it (first 2,000 characters of each).
    tool: str | None = Field(default=None, description="kind tool: the tool's name.")
    callId: str | None = Field(default=None, description="kind tool: the model's call id.")
    arguments: str | None = Field(default=None, description="kind tool: the call's arguments.")
    argumentsTruncated: int | None = Field(
        default=None, description="The full length of the arguments, when cut."
    )
    result: str | None = Field(default=None, description="kind tool, once done: its result.")
    resultTruncated: int | None = Field(
        default=None, description="The full length of the result, when cut."
    )


UsageGroupBy = Literal["agent", "session", "turn", "profile", "provider", "model", "day"]


class UsageSums(StrictModel):
    modelCalls: int = Field(
        description="Model steps journaled (retries and failovers within a step count once)."
    )
    promptTokens: int
    completionTokens: int
    totalTokens: int


class UsageGroup(UsageSums):
    key: str | int = Field(
        description="The agent, session id, turn seq, profile, provider, "
        "model or UTC day (YYYY-MM-DD) summed."
    )


class Usage(StrictModel):
    since: Timestamp | None
    until: Timestamp | None
    total: UsageSums
    groupBy: UsageGroupBy | None = None
    groups: list[UsageGroup] | None = None
    nextPageToken: str | None = None


class TurnView(StrictModel):
    id: str
    seq: int
    state: TurnState
    source: str
    attempts: int
    provider: str | None
    error: dict[str, Any] | None
    createdAt: Timestamp
    startedAt: Timestamp | None
    finishedAt: Timestamp | None
    steps: list[StepView]
    usage: UsageSums


EventType = Literal[
    "message.created",
    "message.delta",
    "turn.queued",
    "turn.started",
    "turn.completed",
    "turn.failed",
    "turn.cancelled",
    "step.started",
    "step.completed",
    "tools.unavailable",
]


class SessionEvent(StrictModel):
    """One session event: the JSON in an SSE event's `data` line."""

    id: int = Field(description="Per-session, increasing: resume after it with Last-Event-ID.")
    type: EventType
    turnId: str | None
    data: dict[str, Any] = Field(
        description="By type. step.*: `step`, `index`, `kind`; a model step's completion "
        "`provider` and `toolCalls`; a tool step's `tool`, `callId` and `arguments`, and on "
        "completion `result`, `isError` (and `error`), each text cut at 2,000 characters "
        "(`argumentsTruncated` / `resultTruncated`: the full length); a knowledge step's "
        "completion `documents`. message.delta: `text` (`reset`: start over). "
        "tools.unavailable: `sources` [{source, error}]."
    )
    createdAt: Timestamp


class FireResult(StrictModel):
    claimed: bool = Field(description="false: this fire time was already taken.")
    fireAt: Timestamp
    outcome: Literal["queued", "failed"] | None = None
    sessionId: str | None = None
    turnId: str | None = None
    streamFrom: int | None = None
    error: str | None = None


class FireView(StrictModel):
    fireAt: Timestamp
    reason: str
    sessionId: str | None
    turnId: str | None
    outcome: str
    error: str | None


class Fires(StrictModel):
    nextFireAt: Timestamp | None
    items: list[FireView]


class ToolSourceView(StrictModel):
    type: Literal["builtin", "skill", "mcp"]
    skill: str | None = Field(default=None, description="type skill: the skill's name.")
    server: str | None = Field(default=None, description="type mcp: the MCPServer.")
    tool: str | None = Field(default=None, description="type mcp: the tool's name there.")
    allowedBy: list[str] = Field(
        default_factory=list, description="type mcp: the MCPBindings that permit the tool."
    )


class EffectiveTool(StrictModel):
    name: str = Field(description="The name the agent's model sees and calls.")
    description: str
    inputSchema: dict[str, Any]
    readOnlyHint: bool | None = Field(
        default=None, description="type mcp: the tool's readOnlyHint annotation."
    )
    source: ToolSourceView


class ServerBindingView(StrictModel):
    name: str
    allow: list[str] | None = Field(description="Globs; null: every tool not denied.")
    deny: list[str]
    readOnly: bool


class ServerToolsView(StrictModel):
    server: str
    state: Literal["available", "unavailable", "unbound"] = Field(
        description="unbound: referenced, but no binding covers the agent (not contacted); "
        "unavailable: could not list its tools now (see error)."
    )
    error: str | None
    bindings: list[ServerBindingView]
    tools: list[str] = Field(description="The tools offered to the agent.")
    withheld: list[str] = Field(description="Tools the server lists that no binding permits.")


class UnavailableSource(StrictModel):
    source: str = Field(description="`mcp:<server>` or `skill:<name>`.")
    error: str


class AgentTools(StrictModel):
    agent: str
    tools: list[EffectiveTool] = Field(description="What a turn would offer the model now.")
    servers: list[ServerToolsView]
    unavailable: list[UnavailableSource] = Field(
        description="Sources a turn would go without now, as its tools.unavailable event says."
    )


RESPONSE_MODELS: tuple[type[StrictModel], ...] = (
    Health,
    Whoami,
    TokenView,
    CreatedToken,
    TokenList,
    ApplyResult,
    MessageView,
    MessageList,
    SessionList,
    Accepted,
    Cancelled,
    TurnView,
    SessionEvent,
    FireResult,
    Fires,
    Usage,
    AgentTools,
)
