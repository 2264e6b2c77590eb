"""API tokens: minted with a role and namespace scope, stored as SHA-256 hashes.

Secrets are 256-bit random values, so a fast hash is sufficient (no password stretching
needed); the plaintext is returned once at creation and never stored.
"""

from __future__ import annotations

import builtins  # a class here has a method named `list`: later annotations say builtins.list
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from talon.auth.cache import PrincipalCache
from talon.auth.principal import ROLE_RANK, Principal
from talon.auth.shared_secret import text_bytes
from talon.errors import Invalid, NotFound, PermissionDenied, Unauthenticated
from talon.ops.catalog import TOOL_NAMES
from talon.resources.meta import DnsLabel, StrictModel
from talon.store.database import Database, Tx

BOOTSTRAP_TOKEN_ID = "bootstrap-admin"
# Revocations and replaced secrets, so every process drops its cached principals.
TOKENS_CHANNEL = "talon_tokens"
ALL_NAMESPACES = "*"
_COLUMNS = "id, name, role, namespaces, tools, created_by, created_at, expires_at, revoked_at"


class TokenRequest(StrictModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    role: Literal["admin", "write", "read"]
    namespaces: list[DnsLabel | Literal["*"]] = Field(min_length=1)
    expiresAt: datetime | None = None
    ttlSeconds: int | None = Field(default=None, ge=60, le=366 * 86400)
    # Limit the token to these talon-ops tools (for handing to an agent); omit for a general
    # token. A limited token is accepted by talon-ops only.
    tools: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> TokenRequest:
        unknown = sorted(set(self.tools or []) - TOOL_NAMES)
        if unknown:
            raise ValueError(f"unknown talon-ops tools {unknown}; known: {sorted(TOOL_NAMES)}")
        if ALL_NAMESPACES in self.namespaces and len(self.namespaces) > 1:
            raise ValueError("'*' (all namespaces) cannot be combined with names")
        if self.expiresAt is not None and self.ttlSeconds is not None:
            raise ValueError("set at most one of expiresAt and ttlSeconds")
        if self.expiresAt is not None:
            if self.expiresAt.tzinfo is None:
                raise ValueError("expiresAt needs a time zone offset")
            if self.expiresAt <= datetime.now(UTC):
                raise ValueError("expiresAt is in the past")
        return self

    @property
    def scope(self) -> tuple[str, ...] | None:
        return None if self.namespaces == [ALL_NAMESPACES] else tuple(sorted(self.namespaces))

    @property
    def expiry(self) -> datetime | None:
        if self.ttlSeconds is not None:
            return datetime.now(UTC) + timedelta(seconds=self.ttlSeconds)
        return self.expiresAt


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    role: str
    namespaces: list[str] | None
    tools: list[str] | None
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat().replace("+00:00", "Z") if value else None

        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "namespaces": self.namespaces if self.namespaces is not None else [ALL_NAMESPACES],
            "tools": self.tools,
            "createdBy": self.created_by,
            "createdAt": iso(self.created_at),
            "expiresAt": iso(self.expires_at),
            "revokedAt": iso(self.revoked_at),
        }


def _bounded_expiry(request: TokenRequest, parent_expiry: datetime | None) -> datetime | None:
    """The child's expiry: as asked, or the parent's when none is asked; never later."""
    asked = request.expiry
    if parent_expiry is None:
        return asked
    if asked is None:
        return parent_expiry
    if asked > parent_expiry:
        field = "ttlSeconds" if request.ttlSeconds is not None else "expiresAt"
        when = parent_expiry.isoformat().replace("+00:00", "Z")
        raise Invalid(
            f"a token cannot outlive the token that mints it (which expires at {when})",
            [{"path": field, "message": f"later than the minting token's expiry {when}"}],
        )
    return asked


def _announce_invalidation(tx: Tx, token_id: str) -> None:
    tx.execute("SELECT pg_notify(%s, %s)", (TOKENS_CHANNEL, token_id))


def hash_secret(secret: str | bytes) -> bytes:
    """Text (a minted or configured secret) as UTF-8; bytes (from a header) as sent."""
    return hashlib.sha256(secret if isinstance(secret, bytes) else text_bytes(secret)).digest()


class TokenService:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.cache = PrincipalCache()
        self._invalidations_live: Callable[[], bool] | None = None

    def use_cache(self, invalidations_live: Callable[[], bool]) -> None:
        """Remember authenticated tokens while `invalidations_live()`: TOKENS_CHANNEL
        notifications reach `cache.clear` (wired by Services)."""
        self._invalidations_live = invalidations_live

    def authenticate(self, secret: str | bytes) -> Principal:
        digest = hash_secret(secret)
        cached = self._invalidations_live is not None and self._invalidations_live()
        if cached:
            principal = self.cache.get(digest)
            if principal is not None:
                return principal
        version = self.cache.version()
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT id, name, role, namespaces, tools, expires_at FROM api_tokens "
                "WHERE secret_hash=%s AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > now())",
                (digest,),
            )
        if row is None:
            raise Unauthenticated("invalid, expired or revoked token")
        namespaces = tuple(row["namespaces"]) if row["namespaces"] is not None else None
        tools = tuple(row["tools"]) if row["tools"] is not None else None
        principal = Principal(
            row["id"], row["name"], row["role"], namespaces, tools, row["expires_at"]
        )
        if cached:
            self.cache.put(digest, principal, row["expires_at"], version)
        return principal

    def bootstrap_admin(self, secret: str) -> None:
        """Install `secret` as the all-namespace admin token (TALON_ADMIN_TOKEN).

        A changed secret replaces the old one and lifts a revocation; an unchanged one keeps
        a revocation in place, so revoking the bootstrap token survives restarts.
        """
        digest = hash_secret(secret)
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO api_tokens (id, name, secret_hash, role, namespaces, created_by) "
                "VALUES (%s, 'bootstrap admin (TALON_ADMIN_TOKEN)', %s, 'admin', NULL, 'system') "
                "ON CONFLICT (id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash, "
                "revoked_at = CASE WHEN api_tokens.secret_hash = EXCLUDED.secret_hash "
                "THEN api_tokens.revoked_at ELSE NULL END",
                (BOOTSTRAP_TOKEN_ID, digest),
            )
            _announce_invalidation(tx, BOOTSTRAP_TOKEN_ID)
        self.cache.clear()

    def create(self, principal: Principal, request: TokenRequest) -> tuple[TokenInfo, str]:
        if ROLE_RANK[request.role] > ROLE_RANK[principal.role]:
            raise PermissionDenied(f"a {principal.role} token cannot mint a {request.role} token")
        if not principal.covers(request.scope):
            raise PermissionDenied(
                "a token can only be minted for namespaces its creator can see",
                [{"path": "namespaces", "message": "outside the caller's namespaces"}],
            )
        if principal.tools is not None and not set(request.tools or TOOL_NAMES) <= set(
            principal.tools
        ):
            raise PermissionDenied(
                "a token can only be minted for tools its creator may call",
                [{"path": "tools", "message": "outside the caller's tools"}],
            )
        secret = "tln_" + secrets.token_urlsafe(32)
        token_id = "tok_" + secrets.token_hex(8)
        with self.db.transaction() as tx:
            # The parent, locked against a concurrent revocation (which then sees this child
            # and revokes it too) and read for its expiry: a child never outlives it.
            parent = tx.one(
                "SELECT expires_at FROM api_tokens WHERE id = %s AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > now()) FOR SHARE",
                (principal.token_id,),
            )
            if parent is None:
                raise Unauthenticated("invalid, expired or revoked token")
            expiry = _bounded_expiry(request, parent["expires_at"])
            row = tx.one(
                "INSERT INTO api_tokens (id, name, secret_hash, role, namespaces, tools, "
                f"created_by, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                f"RETURNING {_COLUMNS}",
                (
                    token_id,
                    request.name,
                    hash_secret(secret),
                    request.role,
                    list(request.scope) if request.scope is not None else None,
                    sorted(request.tools) if request.tools is not None else None,
                    principal.token_id,
                    expiry,
                ),
            )
        assert row is not None
        return TokenInfo(**row), secret

    def list(self, principal: Principal, *, after: str | None, limit: int) -> list[TokenInfo]:
        where, params = self._visibility(principal)
        if after:
            where += " AND id > %s"
            params.append(after)
        params.append(limit)
        with self.db.transaction() as tx:
            rows = tx.all(
                f"SELECT {_COLUMNS} FROM api_tokens WHERE {where} ORDER BY id LIMIT %s", params
            )
        return [TokenInfo(**r) for r in rows]

    def get(self, principal: Principal, token_id: str) -> TokenInfo:
        with self.db.transaction() as tx:
            return self._get(tx, principal, token_id)

    def revoke(self, principal: Principal, token_id: str) -> TokenInfo:
        """Revoke the token and every token minted from it, at any depth."""
        with self.db.transaction() as tx:
            self._get(tx, principal, token_id)
            # Lock first: a mint from this token that is committing now finishes before the
            # next statement, whose fresh snapshot then sees its child.
            tx.execute("SELECT 1 FROM api_tokens WHERE id = %s FOR UPDATE", (token_id,))
            # One notification per revoked token: every process drops its cache, and each
            # stream open under one of them (subscribed by token id) ends.
            tx.execute(
                "WITH RECURSIVE lineage AS (SELECT id FROM api_tokens WHERE id = %s "
                "  UNION SELECT t.id FROM api_tokens t JOIN lineage l ON t.created_by = l.id), "
                "revoked AS (UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) "
                "  WHERE id IN (SELECT id FROM lineage) RETURNING id) "
                "SELECT pg_notify(%s, id) FROM revoked",
                (token_id, TOKENS_CHANNEL),
            )
            row = tx.one(f"SELECT {_COLUMNS} FROM api_tokens WHERE id = %s", (token_id,))
        self.cache.clear()  # this process at once; the others on the notification
        assert row is not None
        return TokenInfo(**row)

    def _get(self, tx: Tx, principal: Principal, token_id: str) -> TokenInfo:
        where, params = self._visibility(principal)
        row = tx.one(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE id=%s AND {where}", [token_id, *params]
        )
        if row is None:
            raise NotFound(f"token {token_id!r} not found")
        return TokenInfo(**row)

    @staticmethod
    def _visibility(principal: Principal) -> tuple[str, builtins.list[Any]]:
        # An all-namespace admin manages every token; a scoped admin those within its scope
        # (every namespace of the token is one of its own), whoever minted them.
        if principal.namespaces is None:
            return "TRUE", []
        return "namespaces IS NOT NULL AND namespaces <@ %s::text[]", [list(principal.namespaces)]
