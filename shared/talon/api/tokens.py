"""Handlers for /v1/tokens and /v1/whoami."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from talon.api.body import parse_body
from talon.api.params import LIMIT, PAGE_TOKEN
from talon.api.routing import Answer, Context, Route
from talon.auth.tokens import TokenRequest
from talon.errors import Invalid, details_from_validation_error


def create_token(ctx: Context) -> tuple[int, dict[str, Any]]:
    assert ctx.principal is not None
    body = parse_body(ctx.request, ctx.services.settings.gateway.max_body_bytes)
    try:
        request = TokenRequest.model_validate(body)
    except ValidationError as exc:
        details = details_from_validation_error(exc)
        raise Invalid(
            f"invalid token request: {details[0]['path']}: {details[0]['message']}", details
        ) from exc
    info, secret = ctx.services.tokens.create(ctx.principal, request)
    return 201, {**info.to_dict(), "token": secret}


def list_tokens(ctx: Context) -> dict[str, Any]:
    assert ctx.principal is not None
    limit = ctx.param("limit")
    rows = ctx.services.tokens.list(
        ctx.principal, after=ctx.param("pageToken") or None, limit=limit + 1
    )
    next_token = rows[limit - 1].id if len(rows) > limit else None
    return {"items": [r.to_dict() for r in rows[:limit]], "nextPageToken": next_token}


def get_token(ctx: Context, token_id: str) -> dict[str, Any]:
    assert ctx.principal is not None
    return ctx.services.tokens.get(ctx.principal, token_id).to_dict()


def revoke_token(ctx: Context, token_id: str) -> dict[str, Any]:
    assert ctx.principal is not None
    return ctx.services.tokens.revoke(ctx.principal, token_id).to_dict()


def whoami(ctx: Context) -> dict[str, Any]:
    p = ctx.principal
    assert p is not None
    return {
        "tokenId": p.token_id,
        "name": p.name,
        "role": p.role,
        "namespaces": list(p.namespaces) if p.namespaces is not None else ["*"],
        "tools": list(p.tools) if p.tools is not None else None,
    }


def token_routes() -> list[Route]:
    tags = ("tokens",)
    return [
        Route(
            "GET",
            "/v1/whoami",
            whoami,
            "Describe the calling token.",
            tags=tags,
            answers=(Answer(200, "Whoami"),),
        ),
        Route(
            "POST",
            "/v1/tokens",
            create_token,
            "Mint a token; the secret is returned once, as `token`.",
            role="admin",
            request_schema="TokenRequest",
            tags=tags,
            answers=(Answer(201, "CreatedToken"),),
        ),
        Route(
            "GET",
            "/v1/tokens",
            list_tokens,
            "List tokens (never their secrets).",
            role="admin",
            tags=tags,
            query=(LIMIT, PAGE_TOKEN),
            answers=(Answer(200, "TokenList"),),
        ),
        Route(
            "GET",
            "/v1/tokens/<token_id>",
            get_token,
            "Get a token.",
            role="admin",
            tags=tags,
            answers=(Answer(200, "TokenView"),),
        ),
        Route(
            "DELETE",
            "/v1/tokens/<token_id>",
            revoke_token,
            "Revoke a token.",
            role="admin",
            tags=tags,
            answers=(Answer(200, "TokenView"),),
        ),
    ]
