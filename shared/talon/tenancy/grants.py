"""Secret grants: which secret references a namespace may resolve.

The mapping lives in the operator's configuration (`tenancy.secretGrants`), never in a
tenant's manifests: a namespace may name only the environment variables and Secret Manager
secrets granted to it. The platform's own model key is the one exception, usable by every
namespace but sent only to the base URLs the operator lists for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from talon.config import SecretGrant, TenancySettings


class SecretNotGranted(Exception):
    """A namespace referenced a secret that is not granted to it."""


@dataclass(frozen=True)
class SecretGrants:
    grants: dict[str, SecretGrant]
    platform_key_env: str
    platform_key_base_urls: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: TenancySettings) -> SecretGrants:
        key = settings.platform_model_key
        return cls(
            dict(settings.secret_grants),
            key.env,
            tuple(_normal_url(u) for u in key.base_urls),
        )

    def check(self, namespace: str, ref: dict[str, Any]) -> None:
        """Raise SecretNotGranted unless `namespace` may resolve `ref`."""
        grant = self.grants.get(namespace) or SecretGrant()
        if ref.get("env"):
            if not _granted(ref["env"], grant.env):
                raise SecretNotGranted(
                    f"environment variable {ref['env']} is not granted to namespace {namespace!r}"
                )
            return
        name = str(ref.get("secret") or "")
        if not _granted(name.split("/versions/")[0], grant.secrets):
            raise SecretNotGranted(f"secret {name} is not granted to namespace {namespace!r}")

    def is_platform_key(self, ref: dict[str, Any] | None) -> bool:
        return ref is None or ref == {"env": self.platform_key_env}

    def check_platform_key_url(self, base_url: str | None) -> None:
        """The platform key may go only to the operator's listed base URLs (no base URL: the
        provider's own endpoint)."""
        if base_url is None or _normal_url(base_url) in self.platform_key_base_urls:
            return
        raise SecretNotGranted(
            f"the platform's model key ({self.platform_key_env}) is sent only to "
            f"{', '.join(self.platform_key_base_urls) or 'no base URL'}; give this profile "
            "its own apiKeyFrom"
        )


def _granted(name: str, entries: list[str]) -> bool:
    return any(
        name.startswith(entry[:-1]) if entry.endswith("*") else name == entry for entry in entries
    )


def _normal_url(url: str) -> str:
    return url.rstrip("/")
