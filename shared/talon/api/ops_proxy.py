"""Forward /mcp/talon-ops from the gateway to the ops_mcp function, so one base URL serves
both locally. MCP requests here are JSON in, JSON out (the server runs stateless with JSON
responses), so a plain request/response relay is enough."""

from __future__ import annotations

import flask
import httpx

from talon.api.body import read_raw
from talon.api.http import error_response, json_response
from talon.api.id_tokens import IdTokenCache, MintIdToken
from talon.api.unread_body import leave_unread
from talon.auth.shared_secret import header_bytes
from talon.errors import TalonError

OPS_PREFIX = "/mcp/talon-ops"
# Not Host: httpx sends the upstream's, the one the ops_mcp function lists in
# gateway.opsMcpAllowedHosts (and the one Cloud Run routes by).
_FORWARDED = ("authorization", "content-type", "accept", "mcp-protocol-version",
              "mcp-session-id", "last-event-id")  # fmt: skip
TIMEOUT_SECONDS = 300.0


class OpsProxy:
    def __init__(self, upstream: str, *, id_tokens: MintIdToken | None = None) -> None:
        """`id_tokens(audience)` gives the ID token to send for the upstream (the private
        ops_mcp function in the cloud: `google_id_tokens()`); None sends none."""
        self.upstream = upstream.rstrip("/")
        self.client = httpx.Client(timeout=TIMEOUT_SECONDS)
        self.id_tokens = id_tokens

    def handles(self, path: str) -> bool:
        return path.rstrip("/") == OPS_PREFIX

    def __call__(self, request: flask.Request, max_body: int) -> flask.Response:
        try:
            # Counted while read: a declared or streamed body over the limit is refused after
            # at most `max_body` + 1 bytes, never buffered whole.
            body = read_raw(request, max_body)
        except TalonError as exc:
            return leave_unread(request, json_response(exc.status, exc.to_dict()))
        # The bytes the caller sent (httpx would refuse non-ASCII text: a 502 for a bad token).
        headers = {k.encode("latin-1"): header_bytes(v) for k, v in request.headers.items()
                   if k.lower() in _FORWARDED}  # fmt: skip
        try:
            if self.id_tokens is not None:
                headers[b"X-Serverless-Authorization"] = (
                    f"Bearer {self.id_tokens(self.upstream)}".encode()
                )
            reply = self.client.request(
                request.method, f"{self.upstream}{OPS_PREFIX}", content=body, headers=headers
            )
        except Exception as exc:  # transport errors, or no ID token to be had
            return error_response(502, "bad_gateway", f"talon-ops is unreachable: {exc}")
        kept = {k: v for k, v in reply.headers.items()
                if k.lower() in ("content-type", "mcp-session-id")}  # fmt: skip
        return flask.Response(reply.content, status=reply.status_code, headers=kept)


def google_id_tokens() -> IdTokenCache:
    """ID tokens from the gateway's service account (the metadata server on Cloud Run), each
    kept until shortly before it expires (an hour), not fetched per request."""
    return IdTokenCache(_fetch_google_id_token)


def _fetch_google_id_token(audience: str) -> str:
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token

    return str(id_token.fetch_id_token(Request(), audience))
