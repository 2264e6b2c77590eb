"""Checks that a request was sent by Google on behalf of one of our service accounts (a
Pub/Sub push or a Cloud Tasks callback with an OIDC token)."""

from __future__ import annotations

import flask

from talon.errors import PermissionDenied, Unauthenticated, Unavailable


def verify_google_oidc(request: flask.Request, *, audience: str, email: str, what: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(f"{what} without an OIDC token")
    from google.auth import exceptions as google_exceptions
    from google.auth.transport import requests as google_requests
    from google.oauth2 import id_token

    try:
        claims = id_token.verify_oauth2_token(
            token, google_requests.Request(), audience=audience or None
        )
    except ValueError as exc:
        raise Unauthenticated(f"invalid OIDC token on the {what}: {exc}") from exc
    except google_exceptions.TransportError as exc:
        # Google's signing keys could not be fetched: not the caller's fault; retry later.
        raise Unavailable(f"cannot check the {what}'s OIDC token now: {exc}") from exc
    if not claims.get("email_verified") or claims.get("email") != email:
        raise PermissionDenied(f"the {what}'s OIDC token is not from the configured account")
