"""Secret references (`{env: NAME}` or `{secret: projects/p/secrets/s[/versions/v]}`) are
resolved when a value is needed, never stored: environment variables locally, Google Secret
Manager in the cloud (cached briefly, so a rotation is picked up within minutes)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

SECRET_CACHE_SECONDS = 300.0
_cache: dict[str, tuple[str, float]] = {}
_lock = threading.Lock()


class SecretMissing(Exception):
    """A referenced secret has no value here."""


def resolve_secret(ref: dict[str, Any]) -> str:
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
    if cached is not None and time.monotonic() - cached[1] < SECRET_CACHE_SECONDS:
        return cached[0]
    from talon.runtime.secret_manager import access_secret  # Google import only when used

    value = access_secret(name)
    with _lock:
        _cache[name] = (value, time.monotonic())
    return value
