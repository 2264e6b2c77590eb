"""Spec models of the resource kinds, in the manifest shapes of the seed: Namespace,
AgentTemplate, Agent and Knowledge here, with what the kinds share (identifiers, session ids,
secret references); Schedule in `schedule_kind.py`; MCPServer and MCPBinding in
`mcp_kinds.py`. `registry.py` lists them all."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from talon.resources.meta import DnsLabel, NonBlank, Resource, StrictModel

IDENTIFIER_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
SESSION_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HEADER_NAME_RE = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
MAX_KNOWLEDGE_BYTES = 512 * 1024

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
