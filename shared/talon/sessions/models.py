"""Request bodies and views for sessions, messages and turns."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator

from talon.resources.kinds import SessionId
from talon.resources.meta import StrictModel

MAX_MESSAGE_CHARS = 100_000
MultitaskStrategy = Literal["enqueue", "reject", "interrupt"]


class CreateSession(StrictModel):
    id: SessionId | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        import json

        if len(json.dumps(value)) > 16_384:
            raise ValueError("must serialise to at most 16 KiB of JSON")
        return value


class PostMessage(StrictModel):
    content: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    multitask_strategy: MultitaskStrategy = "enqueue"

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class SessionMessage(StrictModel):
    role: Literal["user", "assistant", "system"]
    content: str


class StreamStep(StrictModel):
    step: str
    state: Literal["started", "completed", "failed"]


class Session(StrictModel):
    """A session as the API shows it: the seed's shape (id, agent, ns, status, metadata,
    messages, stream) plus the turn state and counters."""

    id: SessionId
    agent: str
    ns: str
    status: Literal["active"]
    metadata: dict[str, Any]
    activeTurn: dict[str, Any] | None
    queuedTurns: int
    messageCount: int
    lastEventId: int
    createdAt: str
    updatedAt: str
    messages: list[SessionMessage] | None = None  # the most recent ones (GET one session)
    stream: list[StreamStep] | None = None  # the steps of the latest turn
