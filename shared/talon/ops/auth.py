"""Talon bearer tokens for the talon-ops MCP server, through the MCP SDK's own auth: the SDK's
bearer middleware calls `TalonTokenVerifier` for every request, answers 401 itself when it
returns None, and keeps the `AccessToken` it returns in its auth context, where the tools
read the principal back with `current_principal()`."""

from __future__ import annotations

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from pydantic import ConfigDict

from talon.auth.principal import Principal
from talon.auth.shared_secret import header_bytes
from talon.auth.tokens import TokenService
from talon.errors import Unauthenticated


class PrincipalToken(AccessToken):
    """The SDK's access token plus the Talon principal it stands for."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    principal: Principal


class TalonTokenVerifier(TokenVerifier):
    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        """None (the SDK's 401) for an unknown, expired or revoked token. Other errors (the
        database down) propagate, to be answered with their own status."""
        try:
            # A PostgreSQL lookup (or the token cache): off the event loop. The SDK hands the
            # header over as Starlette's Latin-1 text; hash the bytes the client sent.
            principal = await anyio.to_thread.run_sync(
                self.tokens.authenticate, header_bytes(token)
            )
        except Unauthenticated:
            return None
        # No expires_at: `authenticate` has checked expiry, and a token stays good for the
        # whole (short, stateless) request it authenticated.
        return PrincipalToken(
            token=token,
            client_id=principal.token_id,
            subject=principal.name,
            scopes=[],
            principal=principal,
        )


def current_principal() -> Principal | None:
    """The principal of the request being handled (None outside an authenticated one)."""
    token = get_access_token()
    return token.principal if isinstance(token, PrincipalToken) else None
