"""A stand-in for Google's OIDC signing: a key made here, its certificate served on 127.0.0.1
in the shape of https://www.googleapis.com/oauth2/v1/certs (`{key id: PEM certificate}`, with
Cache-Control), and ID tokens signed with it that look like the ones Pub/Sub and Cloud Tasks
attach. Counts the certificate fetches, so tests can see what a verifier's cache saves."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

ISSUER = "https://accounts.google.com"


class SigningKey:
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key_id)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        private_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._signer = crypt.RSASigner.from_string(private_pem, key_id=key_id)

    def token(self, *, audience: str, email: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER, "aud": audience, "email": email, "email_verified": True,
            "sub": "1234567890", "iat": now, "exp": now + 3600, **claims,
        }  # fmt: skip
        return jwt.encode(self._signer, payload).decode()


class GoogleCerts:
    """The certificate endpoint. `max_age` goes into Cache-Control; `delay` holds each
    answer back, so concurrent fetches overlap."""

    def __init__(self, *, max_age: int = 300, delay: float = 0.0) -> None:
        self.key = SigningKey("test-key-1")
        self.max_age = max_age
        self.delay = delay
        self.fetches = 0
        self._lock = threading.Lock()
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with served._lock:
                    served.fetches += 1
                time.sleep(served.delay)
                body = json.dumps({served.key.key_id: served.key.certificate_pem}).encode()
                self.send_response(200)  # also sends Date, which HTTP caching needs
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                # What Google sends, with our max-age.
                self.send_header(
                    "Cache-Control",
                    f"public, max-age={served.max_age}, must-revalidate, no-transform",
                )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/oauth2/v1/certs"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def token(self, *, audience: str, email: str, **claims: Any) -> str:
        return self.key.token(audience=audience, email=email, **claims)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
