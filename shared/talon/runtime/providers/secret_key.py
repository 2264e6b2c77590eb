"""A profile whose API key lives in Secret Manager: the key is read at call time (cached with
a TTL by `talon.runtime.secrets`), so a deployment never holds it in its environment and a
rotation reaches running workers. A 401 means the key may have been rotated since it was
cached: it is read again, bypassing the cache, and the call is tried once more if it changed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from talon.runtime.providers.base import ModelClient, ModelError, ModelRequest, ModelResponse
from talon.runtime.secrets import SecretMissing, resolve_secret

UNAUTHORIZED = 401


class SecretKeyedModel:
    def __init__(
        self, label: str, ref: dict[str, Any], build: Callable[[str], ModelClient]
    ) -> None:
        self.label = label
        self._ref = ref
        self._build = build
        self._clients: dict[str, ModelClient] = {}  # by key: the current one, and during a
        self._lock = threading.Lock()  # rotation the previous one

    def complete(self, request: ModelRequest) -> ModelResponse:
        key = self._key(fresh=False)
        try:
            return self._client(key).complete(request)
        except ModelError as exc:
            if exc.status != UNAUTHORIZED:
                raise
            rotated = self._key(fresh=True)
            if rotated == key:
                raise
            return self._client(rotated).complete(request)

    def _key(self, *, fresh: bool) -> str:
        try:
            return resolve_secret(self._ref, fresh=fresh)
        except SecretMissing as exc:
            raise ModelError(f"{self.label}: no API key ({exc})", retryable=exc.retryable) from exc

    def _client(self, key: str) -> ModelClient:
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                if len(self._clients) >= 2:
                    self._clients.clear()
                client = self._clients[key] = self._build(key)
            return client
