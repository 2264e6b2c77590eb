"""A namespace's manifests checked against the operator's tenancy policy when they are
applied: every secret reference granted to the namespace, every URL inside the egress
policy. The worker checks the same again when it resolves and connects (`runtime/`), since
a policy can tighten after a manifest was accepted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from talon.config import TenancySettings
from talon.errors import Invalid
from talon.resources.meta import Resource
from talon.tenancy.egress import EgressDenied, EgressPolicy
from talon.tenancy.grants import SecretGrants, SecretNotGranted


@dataclass(frozen=True)
class TenancyPolicy:
    grants: SecretGrants
    egress: EgressPolicy

    @classmethod
    def from_settings(cls, settings: TenancySettings) -> TenancyPolicy:
        return cls(
            SecretGrants.from_settings(settings), EgressPolicy.from_settings(settings.egress)
        )

    def check_resource(self, resource: Resource) -> None:
        """Raise Invalid naming every field of `resource` the policy refuses."""
        namespace = resource.metadata.namespace or ""
        body = resource.body()
        problems = list(self._problems(resource.kind, resource.BODY_FIELD, namespace, body))
        if problems:
            details = [{"path": path, "message": message} for path, message in problems]
            summary = "; ".join(f"{path}: {message}" for path, message in problems)
            raise Invalid(f"{resource.kind} {resource.metadata.name!r}: {summary}", details)

    def _problems(
        self, kind: str, prefix: str, namespace: str, body: dict[str, Any]
    ) -> Iterator[tuple[str, str]]:
        if kind == "MCPServer":
            yield from self._url(f"{prefix}.url", body.get("url"))
            for index, header in enumerate(body.get("headers") or []):
                yield from self._secret(
                    f"{prefix}.headers[{index}].valueFrom", namespace, header.get("valueFrom")
                )
        elif kind == "AgentTemplate":
            yield from self._policy(f"{prefix}.modelPolicy", namespace, body.get("modelPolicy"))
        elif kind == "Agent":
            overrides = body.get("overrides") or {}
            yield from self._policy(
                f"{prefix}.overrides.modelPolicy", namespace, overrides.get("modelPolicy")
            )

    def _policy(
        self, prefix: str, namespace: str, policy: dict[str, Any] | None
    ) -> Iterator[tuple[str, str]]:
        for index, profile in enumerate((policy or {}).get("profiles") or []):
            model = profile.get("model") or {}
            path = f"{prefix}.profiles[{index}].model"
            base_url = model.get("baseUrl")
            if base_url is not None:
                yield from self._url(f"{path}.baseUrl", base_url)
            ref = model.get("apiKeyFrom")
            if ref is None:
                continue  # the platform key, which never goes to other base URLs (runtime)
            if self.grants.is_platform_key(ref):
                try:
                    self.grants.check_platform_key_url(base_url)
                except SecretNotGranted as exc:
                    yield f"{path}.apiKeyFrom.env", str(exc)
                continue
            yield from self._secret(f"{path}.apiKeyFrom", namespace, ref)

    def _secret(
        self, path: str, namespace: str, ref: dict[str, Any] | None
    ) -> Iterator[tuple[str, str]]:
        if not ref:
            return
        try:
            self.grants.check(namespace, ref)
        except SecretNotGranted as exc:
            yield f"{path}.{'env' if ref.get('env') else 'secret'}", str(exc)

    def _url(self, path: str, url: Any) -> Iterator[tuple[str, str]]:
        if not isinstance(url, str):
            return
        try:
            self.egress.check_url(url)
        except EgressDenied as exc:
            yield path, str(exc)
