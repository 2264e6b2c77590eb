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
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from talon.runtime.providers.base import ModelClient, ModelError, ModelRequest, ModelResponse
from talon.runtime.providers.demo import DemoModel
from talon.runtime.providers.openai_chat import OpenAIChatModel
from talon.runtime.providers.secret_key import SecretKeyedModel

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


def _key_source(model: dict[str, Any]) -> dict[str, Any]:
    return model.get("apiKeyFrom") or {"env": "OPENAI_API_KEY"}


def _env_key(model: dict[str, Any]) -> str | None:
    """The key from the environment; None for Secret Manager keys (read at call time)."""
    source = _key_source(model)
    if not source.get("env"):
        return None
    return os.environ.get(source["env"]) or None


def policy_credentials(model_policy: dict[str, Any]) -> str:
    """A fingerprint of the environment keys a policy would use now, so a changed key builds
    new clients (Secret Manager keys are read per call and need no rebuild)."""
    keys = [_env_key(p["model"]) or "" for p in model_policy.get("profiles", [])]
    return hashlib.sha256("\0".join(keys).encode()).hexdigest()[:16]


def build_clients(model_policy: dict[str, Any], *, demo_fallback: bool) -> list[ProfileClient]:
    clients = []
    for profile in model_policy.get("profiles", []):
        model = profile["model"]
        name = profile["name"]
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
            )

        source = _key_source(model)
        if source.get("secret"):
            label = f"{name}/{model['provider']}:{model['name']}"
            clients.append(ProfileClient(name, SecretKeyedModel(label, source, build)))
            continue
        key = _env_key(model)
        if key is None and model.get("baseUrl"):
            key = "unused"  # local OpenAI-compatible servers usually ignore the key
        if key is None:
            if demo_fallback:
                log.info("profile %s has no credentials; using the demo provider", name)
                clients.append(ProfileClient(name, DemoModel(name, "demo (no credentials)")))
                continue
            clients.append(ProfileClient(name, _MissingCredentials(name, model)))
            continue
        clients.append(ProfileClient(name, build(key)))
    return clients


class _MissingCredentials:
    def __init__(self, profile: str, model: dict[str, Any]) -> None:
        self.label = f"{profile}/{model['provider']}:{model['name']}"
        self._where = _key_source(model)["env"]

    def complete(self, request: ModelRequest) -> ModelResponse:
        raise ModelError(f"{self.label}: no API key ({self._where} is not set)", retryable=False)


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
            wait=wait_random_exponential(
                multiplier=float(retry.get("initialBackoffSeconds", 0.5)),
                max=float(retry.get("maxBackoffSeconds", 8.0)),
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
