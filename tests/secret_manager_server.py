"""A local Google Secret Manager for tests: the OAuth token endpoint of a service account key
it issues (it checks the key's signed assertion, as Google does) and the REST `:access`
method, with per-secret grants, versions and Google's error bodies. Point a process at it
with `GOOGLE_APPLICATION_CREDENTIALS=<credentials_file>` and
`TALON_SECRET_MANAGER_ENDPOINT=<url>`."""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

ACCOUNT = "talon-dispatch@test-project.iam.gserviceaccount.com"
# A service account's assertion names Google's token endpoint as its audience wherever it is
# posted (google-auth does so, and Google checks it).
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
_ACCESS = re.compile(r"^/v1/(projects/[^/]+/secrets/[^/]+)/versions/([^/:]+):access$")


class SecretManagerServer:
    def __init__(self) -> None:
        self.versions: dict[str, list[str]] = {}  # secret name -> values, version 1 first
        self.granted: set[str] = set()  # secrets the account may read
        self.accesses: list[str] = []  # version names read, in order
        self.tokens_issued = 0
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                if self.path != "/token":
                    self._error(404, "NOT_FOUND", "no such method")
                    return
                try:  # the assertion must be signed by the key this server issued
                    claims = jwt.decode(form["assertion"][0], certs=server._public_pem,
                                        audience=GOOGLE_TOKEN_AUDIENCE)  # fmt: skip
                    assert claims["iss"] == ACCOUNT
                except Exception as exc:
                    self._json(400, {"error": "invalid_grant", "error_description": str(exc)})
                    return
                token = "ya29." + secrets.token_urlsafe(16)
                with server._lock:
                    server._tokens.add(token)
                    server.tokens_issued += 1
                self._json(200, {"access_token": token, "expires_in": 3600,
                                 "token_type": "Bearer"})  # fmt: skip

            def do_GET(self) -> None:
                match = _ACCESS.match(self.path)
                if match is None:
                    self._error(404, "NOT_FOUND", f"no such method {self.path}")
                    return
                secret, version = match.groups()
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                with server._lock:
                    known = token in server._tokens
                    values = server.versions.get(secret)
                    granted = secret in server.granted
                if not known:
                    self._error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                                "credentials.")  # fmt: skip
                    return
                if not granted:  # Google answers 403 whether or not the secret exists
                    resource = f"{secret}/versions/{version}"
                    self._error(403, "PERMISSION_DENIED", "Permission "
                                "'secretmanager.versions.access' denied for resource "
                                f"'{resource}' (or it may not exist).")  # fmt: skip
                    return
                number = len(values or []) if version == "latest" else int(version)
                if not values or not 1 <= number <= len(values):
                    self._error(404, "NOT_FOUND", f"Secret Version [{secret}/versions/{version}] "
                                "not found.")  # fmt: skip
                    return
                with server._lock:
                    server.accesses.append(f"{secret}/versions/{version}")
                data = base64.b64encode(values[number - 1].encode()).decode()
                self._json(200, {"name": f"{secret}/versions/{number}",
                                 "payload": {"data": data}})  # fmt: skip

            def _error(self, status: int, code: str, message: str) -> None:
                self._json(status, {"error": {"code": status, "message": message,
                                              "status": code}})  # fmt: skip

            def _json(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self.token_uri = f"{self.url}/token"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def add_version(self, secret: str, value: str, *, grant: bool = True) -> None:
        with self._lock:
            self.versions.setdefault(secret, []).append(value)
            if grant:
                self.granted.add(secret)

    def credentials_file(self, folder: Path) -> Path:
        """A service account key file whose token endpoint is this server."""
        private_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()  # fmt: skip
        path = folder / "service-account.json"
        path.write_text(json.dumps({
            "type": "service_account", "project_id": "test-project",
            "private_key_id": "test-key-1", "private_key": private_pem,
            "client_email": ACCOUNT, "client_id": "1", "token_uri": self.token_uri,
        }))  # fmt: skip
        return path

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
