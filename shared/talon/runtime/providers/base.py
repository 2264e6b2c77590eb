"""The model provider port: one chat completion with optional tool calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model produced it

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class ModelRequest:
    messages: list[dict[str, Any]]  # OpenAI chat format
    tools: list[ToolSpec]
    timeout: float  # seconds left before the turn's deadline
    # Receives answer text as it streams in (providers that cannot stream never call it).
    on_delta: Callable[[str], None] | None = None


@dataclass(frozen=True)
class ModelResponse:
    content: str
    tool_calls: list[ToolCall]
    provider: str  # "<profile>/<provider>:<model>", shown in the stream
    usage: dict[str, int] = field(default_factory=dict)


class ModelError(Exception):
    """A failed call. `retryable`: 429, 5xx, timeouts, connection errors."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class ModelClient(Protocol):
    """One configured model (a policy profile) that can answer a request."""

    label: str

    def complete(self, request: ModelRequest) -> ModelResponse: ...
