"""Google Secret Manager adapter: read one secret version over its REST API with the
process's default credentials (the function's service account on Cloud Run)."""

from __future__ import annotations

import base64

import google.auth
from google.auth.transport.requests import AuthorizedSession

from talon.runtime.secrets import SecretMissing

_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TIMEOUT_SECONDS = 10.0


def access_secret(version_name: str) -> str:
    credentials, _ = google.auth.default(scopes=[_SCOPE])
    session = AuthorizedSession(credentials)
    url = f"https://secretmanager.googleapis.com/v1/{version_name}:access"
    try:
        response = session.get(url, timeout=TIMEOUT_SECONDS)
    except Exception as exc:
        raise SecretMissing(f"cannot read {version_name}: {exc}") from exc
    if response.status_code != 200:
        raise SecretMissing(f"cannot read {version_name}: HTTP {response.status_code}")
    return base64.b64decode(response.json()["payload"]["data"]).decode()
