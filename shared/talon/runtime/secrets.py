"""Secret references (`{env: NAME}` or `{secret: projects/p/secrets/s[/versions/v]}`) are
resolved when a value is needed, never stored: environment variables locally, Google Secret
Manager in the cloud (cached briefly, so a rotation is picked up within minutes; a caller that
sees the value refused, e.g. a 401 from a model provider, asks for a `fresh` read at once)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

SECRET_CACHE_SECONDS = 300.0
_cache: dict[str, tuple[str, float]] = {}
_lock = threading.Lock()


class SecretMissing(Exception):
    """A referenced secret has no value here. `retryable`: the store could not be reached,
    which may pass; a missing secret or a missing grant will not."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def describe(ref: dict[str, Any]) -> str:
    """Where a reference points, for messages (never the value)."""
    return f"environment variable {ref['env']}" if ref.get("env") else str(ref.get("secret"))


def resolve_secret(ref: dict[str, Any], *, fresh: bool = False) -> str:
    """The secret's value. `fresh` skips the cache (the cached value was just refused)."""
    if ref.get("env"):
        value = os.environ.get(ref["env"])
        if not value:
            raise SecretMissing(f"environment variable {ref['env']} is not set")
        return value
    name = str(ref.get("secret") or "")
    if not name:
        raise SecretMissing("the secret reference names neither env nor secret")
    if "/versions/" not in name:
        name += "/versions/latest"
    with _lock:
        cached = _cache.get(name)
    if not fresh and cached is not None and time.monotonic() - cached[1] < SECRET_CACHE_SECONDS:
        return cached[0]
    from talon.runtime import secret_manager  # Google imports only when a secret is used

    try:
        value = secret_manager.access_secret(name)
    except secret_manager.SecretAccessError as exc:
        raise SecretMissing(str(exc), retryable=exc.retryable) from exc
    with _lock:
        _cache[name] = (value, time.monotonic())
    return value


def forget_cached_secrets() -> None:
    with _lock:
        _cache.clear()
