"""Shared pieces of every manifest: names, labels, metadata, the resource envelope."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _dns_label(value: str) -> str:
    if len(value) > 63:
        raise ValueError("must be at most 63 characters")
    if not DNS_LABEL_RE.match(value):
        raise ValueError(
            "must be a DNS label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_label_key(value: str) -> str:
    prefix, _, name = value.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        raise ValueError(f"label key prefix {prefix!r} must be a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME_RE.match(name):
        raise ValueError(f"label key {value!r} must be 1-63 alphanumerics, '-', '_' or '.'")
    return value


def check_label_value(value: str) -> str:
    if value and (len(value) > 63 or not _LABEL_NAME_RE.match(value)):
        raise ValueError(f"label value {value!r} must be 0-63 alphanumerics, '-', '_' or '.'")
    return value


# The documented schema says what the validator checks (it gives clearer messages).
DnsLabel = Annotated[
    str,
    AfterValidator(_dns_label),
    WithJsonSchema({"type": "string", "pattern": DNS_LABEL_RE.pattern, "maxLength": 63}),
]
LabelKey = Annotated[str, AfterValidator(check_label_key)]
LabelValue = Annotated[str, AfterValidator(check_label_value)]
NonBlank = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1)]


class StrictModel(BaseModel):
    """Rejects unknown fields so a typo in a manifest is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ObjectMeta(StrictModel):
    name: DnsLabel
    namespace: DnsLabel | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    annotations: dict[Annotated[str, StringConstraints(max_length=253)], str] = Field(
        default_factory=dict
    )
    # Server-managed; accepted so `get -o yaml | apply` round-trips. Only resourceVersion is read.
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: str | None = None
    updateTimestamp: str | None = None


class Resource(StrictModel):
    """The envelope every kind shares. Subclasses add `spec` (or `definition`)."""

    KIND: ClassVar[str]
    BODY_FIELD: ClassVar[str] = "spec"

    apiVersion: Literal["talon.dev/v1alpha1"]
    kind: str
    metadata: ObjectMeta
    # Server-managed and ignored on input, accepted for round trips.
    status: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        """The kind-specific part (spec/definition) as stored."""
        value = getattr(self, self.BODY_FIELD)
        return value.model_dump(mode="json", exclude_none=True)

    def references(self) -> list[tuple[str, str, str]]:
        """Same-namespace resources this one needs: (kind, name, field path)."""
        return []
