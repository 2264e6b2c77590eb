"""Who may call what: the checks every API surface (HTTP and gRPC) applies to a call, in one
place. A bearer credential becomes a Principal; the Principal must be a general token, see the
namespace the call names (an invisible namespace reads exactly like a missing one) and hold
the call's role."""

from __future__ import annotations

from talon.auth.principal import Principal
from talon.auth.shared_secret import header_bytes
from talon.auth.tokens import TokenService
from talon.errors import PermissionDenied, Unauthenticated
from talon.store.resources import namespace_not_found


def bearer_secret(header: str | bytes) -> bytes | None:
    """The secret of an `Authorization: Bearer <secret>` value, as the bytes sent; None if
    the value is not a bearer credential."""
    raw = header_bytes(header)
    scheme, _, secret = raw.partition(b" ")
    secret = secret.strip(b" \t")
    if scheme.lower() != b"bearer" or not secret:
        return None
    return secret


def authenticate(tokens: TokenService, header: str | bytes) -> Principal:
    secret = bearer_secret(header)
    if secret is None:
        raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
    return tokens.authenticate(secret)


def refuse_tool_tokens(principal: Principal) -> None:
    if principal.tools is not None:
        raise PermissionDenied("this token is limited to talon-ops tools; use it at /mcp/talon-ops")


def authorize(principal: Principal, role: str, namespace: str | None) -> None:
    """Refuse a call outside the principal's namespaces (as not found) or above its role."""
    if namespace is not None and not principal.can_see(namespace):
        raise namespace_not_found(namespace)
    if not principal.has_role(role):
        raise PermissionDenied(f"this route needs the {role} role; the token has {principal.role}")
