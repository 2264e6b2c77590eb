"""A model policy made runnable: each profile retried with backoff, then the next profile."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from talon.backoff import backoff_delay
from talon.runtime.providers.base import ModelClient, ModelError, ModelRequest, ModelResponse
from talon.runtime.providers.demo import DemoModel
from talon.runtime.providers.openai_chat import OpenAIChatModel
from talon.runtime.providers.secret_key import SecretKeyedModel
from talon.tenancy.grants import SecretGrants, SecretNotGranted
from talon.tenancy.http_guard import guarded_client
from talon.tenancy.tenant_policy import TenancyPolicy

log = logging.getLogger(__name__)


class PolicyError(Exception):
    """Every profile failed; `attempts` lists what was tried, in order."""

    def __init__(self, message: str, attempts: list[str]) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass(frozen=True)
class ProfileClient:
    name: str
    client: ModelClient


def _env_key(model: dict[str, Any], platform_env: str) -> str | None:
    """The key an environment variable holds; None for Secret Manager keys (read per call)."""
    source = model.get("apiKeyFrom") or {"env": platform_env}
    if not source.get("env"):
        return None
    return os.environ.get(source["env"]) or None


def policy_credentials(model_policy: dict[str, Any], platform_env: str = "OPENAI_API_KEY") -> str:
    """A fingerprint of the environment keys a policy would use now, so a changed key builds
    new clients (Secret Manager keys are read per call and need no rebuild)."""
    keys = [_env_key(p["model"], platform_env) or "" for p in model_policy.get("profiles", [])]
    return hashlib.sha256("\0".join(keys).encode()).hexdigest()[:16]


def build_clients(
    model_policy: dict[str, Any], *, namespace: str, tenancy: TenancyPolicy, demo_fallback: bool
) -> list[ProfileClient]:
    """A client per profile, each key checked against the namespace's secret grants. The
    profiles share one HTTP client that enforces the egress policy on every connection."""
    grants = tenancy.grants
    http = guarded_client(tenancy.egress)
    clients = []
    for profile in model_policy.get("profiles", []):
        model = profile["model"]
        name = profile["name"]
        label = f"{name}/{model['provider']}:{model['name']}"
        if model["provider"] == "demo":
            clients.append(ProfileClient(name, DemoModel(name, model["name"])))
            continue

        def build(key: str, name: str = name, model: dict[str, Any] = model) -> OpenAIChatModel:
            return OpenAIChatModel(
                profile=name,
                model=model["name"],
                api_key=key,
                base_url=model.get("baseUrl"),
                temperature=model.get("temperature"),
                max_tokens=model.get("maxTokens"),
                http_client=http,
            )

        ref = model.get("apiKeyFrom")
        base_url = model.get("baseUrl")
        try:
            if grants.is_platform_key(ref):
                key = _platform_key(grants, ref, base_url)
            else:
                grants.check(namespace, ref)
                if ref.get("secret"):
                    clients.append(ProfileClient(name, SecretKeyedModel(label, ref, build)))
                    continue
                key = os.environ.get(ref["env"]) or None
        except SecretNotGranted as exc:
            clients.append(ProfileClient(name, _Unusable(label, f"refused: {exc}")))
            continue
        if key is None:
            if demo_fallback:
                log.info("profile %s has no credentials; using the demo provider", name)
                clients.append(ProfileClient(name, DemoModel(name, "demo (no credentials)")))
                continue
            where = (ref or {}).get("env") or grants.platform_key_env
            clients.append(
                ProfileClient(name, _Unusable(label, f"no API key ({where} is not set)"))
            )
            continue
        clients.append(ProfileClient(name, build(key)))
    return clients


def _platform_key(
    grants: SecretGrants, ref: dict[str, Any] | None, base_url: str | None
) -> str | None:
    """The platform's key, only for its own endpoint or the operator's listed base URLs. A
    profile that names no key and points elsewhere (a local OpenAI-compatible server) gets a
    placeholder: the platform key never goes to a URL a tenant chose."""
    try:
        grants.check_platform_key_url(base_url)
    except SecretNotGranted:
        if ref is None:
            return "unused"
        raise
    return os.environ.get(grants.platform_key_env) or None


def _jittered(initial: float, maximum: float) -> Callable[[RetryCallState], float]:
    """tenacity's wait, from the one backoff formula (talon.backoff)."""

    def wait(state: RetryCallState) -> float:
        return backoff_delay(state.attempt_number, initial=initial, maximum=maximum)

    return wait


class _Unusable:
    """A profile that cannot be called (no key, or a key it may not use): fails at once."""

    def __init__(self, label: str, why: str) -> None:
        self.label = label
        self._why = why

    def complete(self, request: ModelRequest) -> ModelResponse:
        raise ModelError(f"{self.label}: {self._why}", retryable=False)


def complete_with_policy(
    clients: list[ProfileClient],
    retry: dict[str, Any],
    request: ModelRequest,
    *,
    deadline: float,
    on_attempt_failed: Callable[[str, ModelError], None] | None = None,
) -> ModelResponse:
    """Try each profile in order; retry retryable errors with exponential backoff and jitter."""
    attempts: list[str] = []
    for profile in clients:
        retrying = Retrying(
            stop=stop_after_attempt(int(retry.get("maxAttempts", 3)))
            | stop_after_delay(max(0.0, deadline - time.monotonic())),
            wait=_jittered(
                float(retry.get("initialBackoffSeconds", 0.5)),
                float(retry.get("maxBackoffSeconds", 8.0)),
            ),
            retry=retry_if_exception(lambda e: isinstance(e, ModelError) and e.retryable),
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ModelError("turn deadline reached", retryable=False)
                    try:
                        return profile.client.complete(
                            ModelRequest(
                                request.messages, request.tools, remaining, request.on_delta
                            )
                        )
                    except ModelError as exc:
                        attempts.append(str(exc))
                        if on_attempt_failed is not None:
                            on_attempt_failed(profile.client.label, exc)
                        raise
        except RetryError:
            pass  # retries exhausted: fail over to the next profile
        except ModelError:
            pass  # not retryable: fail over
        if time.monotonic() >= deadline:
            break
    raise PolicyError("every model profile failed: " + " | ".join(attempts[-3:]), attempts)
