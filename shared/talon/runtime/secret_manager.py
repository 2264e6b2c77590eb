"""Google Secret Manager adapter: read one secret version over its REST API with the
process's default credentials (the function's service account on Cloud Run).

One authorised session per process (its access token is refreshed by google-auth as it
expires). `TALON_SECRET_MANAGER_ENDPOINT` points it at another endpoint (a Private Service
Connect name; the tests' local Secret Manager).
"""

from __future__ import annotations

import base64
import binascii
import os
import threading

import google.auth
import requests
from google.auth.exceptions import GoogleAuthError
from google.auth.transport.requests import AuthorizedSession

_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_ENDPOINT = "https://secretmanager.googleapis.com"
TIMEOUT_SECONDS = 10.0
_sessions: dict[tuple[str, str], AuthorizedSession] = {}
_lock = threading.Lock()


class SecretAccessError(Exception):
    """A version could not be read. `retryable`: the service or network failed, not the
    reference (a missing secret or a missing grant is not retryable)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _session() -> tuple[str, AuthorizedSession]:
    endpoint = os.environ.get("TALON_SECRET_MANAGER_ENDPOINT") or DEFAULT_ENDPOINT
    # Keyed by what decides the credentials too, so a changed environment gets a new session.
    key = (endpoint, os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", ""))
    with _lock:
        session = _sessions.get(key)
        if session is None:
            credentials, _ = google.auth.default(scopes=[_SCOPE])
            session = _sessions[key] = AuthorizedSession(credentials)
    return endpoint.rstrip("/"), session


def access_secret(version_name: str) -> str:
    """The payload of `projects/P/secrets/S/versions/V` as text."""
    try:
        endpoint, session = _session()
        response = session.get(f"{endpoint}/v1/{version_name}:access", timeout=TIMEOUT_SECONDS)
    except GoogleAuthError as exc:
        raise SecretAccessError(f"cannot read {version_name}: {exc}", retryable=True) from exc
    except OSError as exc:  # requests' connection errors and timeouts are OSErrors
        raise SecretAccessError(f"cannot read {version_name}: {exc}", retryable=True) from exc
    if response.status_code != 200:
        retryable = response.status_code == 429 or response.status_code >= 500
        raise SecretAccessError(
            f"cannot read {version_name}: HTTP {response.status_code} {_reason(response)}",
            retryable=retryable,
        )
    try:
        return base64.b64decode(response.json()["payload"]["data"], validate=True).decode()
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SecretAccessError(f"cannot read {version_name}: malformed answer",
                                retryable=True) from exc  # fmt: skip


def _reason(response: requests.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error.get('status', '')}: {error.get('message', '')}".strip(": ")
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
