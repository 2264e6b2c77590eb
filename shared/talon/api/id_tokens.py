"""ID tokens for calling a private service, kept per audience until shortly before they expire.

Minting one is a round trip to the metadata server (on Cloud Run) and a token is good for an
hour, so the gateway mints one per audience and hour instead of one per proxied request.
Nothing here talks to Google: the minting function is handed in (ops_proxy.py has Google's).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable

# audience -> a signed JWT whose `exp` says when it stops being accepted.
MintIdToken = Callable[[str], str]
# Mint a new token this long before the old one expires: covers clock skew between us and the
# receiving side and a request that is still in flight when the token runs out.
REFRESH_BEFORE_SECONDS = 300.0


class IdTokenCache:
    """Callable like the minting function it wraps, and thread-safe. The lock is held while
    minting, so concurrent requests that find no usable token wait for one mint; a gateway
    calls one audience, so that does not hold up anything else."""

    def __init__(
        self,
        mint: MintIdToken,
        *,
        refresh_before: float = REFRESH_BEFORE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._mint = mint
        self._refresh_before = refresh_before
        self._clock = clock  # wall-clock seconds, like `exp`
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # audience -> (token, exp)

    def __call__(self, audience: str) -> str:
        with self._lock:
            cached = self._tokens.get(audience)
            if cached is not None and self._clock() < cached[1] - self._refresh_before:
                return cached[0]
            token = self._mint(audience)
            # A token whose expiry cannot be read is used once and not kept.
            self._tokens[audience] = (token, expiry(token))
            return token


def expiry(token: str) -> float:
    """The token's `exp` claim (epoch seconds), or 0 when it has none. Read without checking
    the signature: the token comes from our own minting call, and this only decides when to
    ask for the next one."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        return 0.0
