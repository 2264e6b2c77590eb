"""Cloud Run function `ops_mcp`: the talon-ops MCP server (ASGI; run with --asgi)."""

from typing import Any

import functions_framework.aio
from starlette.requests import Request

from talon import entrypoints


@functions_framework.aio.http
async def ops_mcp(request: Request) -> Any:
    # An ASGI app returned from the function is run with the request's own scope.
    return entrypoints.ops_mcp()
