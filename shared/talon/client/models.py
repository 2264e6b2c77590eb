"""Typed views of the API's answers. Unknown fields are kept (`model_extra`), so a newer
gateway does not break an older SDK."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Identity(_Model):
    token_id: str = Field(alias="tokenId")
    name: str
    role: str
    namespaces: list[str]
    tools: list[str] | None = None


class Resource(_Model):
    """Any kind: `spec` or `definition` stays a dict, as in the manifests."""

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: dict[str, Any]
    spec: dict[str, Any] | None = None
    definition: dict[str, Any] | None = None
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str | None:
        return self.metadata.get("namespace")


class ApplyResult(_Model):
    kind: str
    name: str
    namespace: str | None = None
    action: str  # created | configured | unchanged


class Session(_Model):
    id: str
    agent: str
    ns: str
    status: str
    metadata: dict[str, Any] = {}
    active_turn: dict[str, Any] | None = Field(default=None, alias="activeTurn")
    queued_turns: int = Field(default=0, alias="queuedTurns")
    message_count: int = Field(default=0, alias="messageCount")
    last_event_id: int = Field(default=0, alias="lastEventId")

    @property
    def idle(self) -> bool:
        """No turn running or waiting."""
        return self.active_turn is None and self.queued_turns == 0


class Turn(_Model):
    """A turn with its steps (`GET .../turns/{turnId}`)."""

    id: str
    state: str
    steps: list[dict[str, Any]] = []


class Token(_Model):
    """An API token as listed (never its secret)."""

    id: str
    name: str
    role: str
    namespaces: list[str]
    tools: list[str] | None = None
    expires_at: str | None = Field(default=None, alias="expiresAt")
    revoked_at: str | None = Field(default=None, alias="revokedAt")


class CreatedToken(Token):
    """A token just created: `token` is its secret, shown this once."""

    token: str


class Accepted(_Model):
    """A posted message: the turn it queued and where its stream starts."""

    turn_id: str = Field(alias="turnId")
    stream_from: int = Field(alias="streamFrom")


class Message(_Model):
    seq: int
    role: str
    content: str | None = None
    turn_id: str | None = Field(default=None, alias="turnId")
    tool_calls: list[dict[str, Any]] | None = Field(default=None, alias="toolCalls")
    tool_call_id: str | None = Field(default=None, alias="toolCallId")


class Event(_Model):
    """One event of a session's stream (`message.delta`, `step.completed`, ...)."""

    id: int
    type: str
    turn_id: str | None = Field(default=None, alias="turnId")
    data: dict[str, Any] = {}


TERMINAL_TURN_EVENTS = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})
