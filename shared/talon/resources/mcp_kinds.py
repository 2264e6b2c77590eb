"""The MCP kinds: MCPServer (a streamable-HTTP tool server and the secret headers it needs)
and MCPBinding (which agents may use which of its tools)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from talon.errors import Invalid
from talon.resources.kinds import HEADER_NAME_RE, SecretRef
from talon.resources.meta import DnsLabel, LabelKey, LabelValue, Resource, StrictModel


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
