"""Checks that a request was sent by Google on behalf of one of our service accounts (a
Pub/Sub push or a Cloud Tasks callback with an OIDC token).

Google's signing certificates change about once a day and are served with a Cache-Control
max-age of hours. A verifier fetches them through one long-lived HTTP session that caches
them for as long as that header allows (CacheControl, as google-auth's docs recommend), so a
verification usually costs no request to Google; without it google-auth fetches them again
for every token.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import cachecontrol
import flask
import requests
from google.auth import exceptions as google_exceptions
from google.auth import transport
from google.auth.transport import requests as google_requests
from google.oauth2 import id_token

from talon.errors import PermissionDenied, Unauthenticated, Unavailable

# What google.oauth2.id_token.verify_oauth2_token checks against; it takes no certs URL, so
# the verifier calls verify_token with this one (tests pass a local server's) and checks the
# issuer itself.
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
# google-auth's transport waits up to 120 s by default; a push or a task would time out first.
CERTS_TIMEOUT_SECONDS = 10.0


class CachedCertsRequest(transport.Request):
    """A google-auth transport over one requests session whose responses are cached by their
    Cache-Control headers. Calls are serialised: requests does not promise that a session is
    thread-safe, and when the cache is cold or stale the first caller fetches while the others
    wait and then read the cache, instead of all fetching at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        session = cachecontrol.CacheControl(requests.Session())
        self._request = google_requests.Request(session=session)

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> transport.Response:
        with self._lock:
            return self._request(
                url, method=method, body=body, headers=headers,
                timeout=timeout or CERTS_TIMEOUT_SECONDS, **kwargs,
            )  # fmt: skip


class GoogleOidcVerifier:
    """Verifies the bearer token of a request: signed by Google, for `audience`, issued to the
    service account `email`. Build one per endpoint and keep it: it holds the certs cache."""

    def __init__(
        self, *, audience: str, email: str, what: str, certs_url: str = GOOGLE_CERTS_URL
    ) -> None:
        # Without an audience, any Google-signed token for the account would pass, including
        # one minted for another service; callers turn missing settings into a ConfigError.
        if not audience or not email:
            raise ValueError("an OIDC verifier needs an audience and a service account email")
        self.audience = audience
        self.email = email
        self.what = what
        self.certs_url = certs_url
        self._request = CachedCertsRequest()

    def __call__(self, request: flask.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(f"{self.what} without an OIDC token")
        claims = self.claims(token)
        if not claims.get("email_verified") or claims.get("email") != self.email:
            raise PermissionDenied(
                f"the {self.what}'s OIDC token is not from the configured account"
            )

    def claims(self, token: str) -> Mapping[str, Any]:
        """The token's claims once its signature, expiry, audience and issuer are checked."""
        try:
            claims = id_token.verify_token(
                token, self._request, audience=self.audience, certs_url=self.certs_url
            )
        except ValueError as exc:
            raise Unauthenticated(f"invalid OIDC token on the {self.what}: {exc}") from exc
        except google_exceptions.TransportError as exc:
            # Google's signing keys could not be fetched: not the caller's fault; retry later.
            raise Unavailable(f"cannot check the {self.what}'s OIDC token now: {exc}") from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthenticated(f"the {self.what}'s OIDC token was not issued by Google")
        return claims
