"""Model token usage of a namespace, an agent or a session over a time range (`.../usage`)."""

from __future__ import annotations

from typing import Any

from talon.api.params import LIMIT, PAGE_TOKEN, SINCE, UNTIL, USAGE_GROUP_BY
from talon.api.routing import Answer, Context, Route
from talon.sessions.usage import UsageQuery, window

NAMESPACE_PREFIXES = ("/v1/ns/<ns>", "/v1/namespaces/<ns>")
QUERY = (SINCE, UNTIL, USAGE_GROUP_BY, LIMIT, PAGE_TOKEN)


def namespace_usage(ctx: Context, ns: str) -> dict[str, Any]:
    return ctx.services.sessions.usage(ns, _query(ctx))


def agent_usage(ctx: Context, ns: str, agent: str) -> dict[str, Any]:
    return ctx.services.sessions.usage(ns, _query(ctx), agent=agent)


def session_usage(ctx: Context, ns: str, agent: str, session_id: str) -> dict[str, Any]:
    return ctx.services.sessions.usage(ns, _query(ctx), agent=agent, session_id=session_id)


def _query(ctx: Context) -> UsageQuery:
    return UsageQuery(
        window(ctx.param("since"), ctx.param("until")),
        group_by=ctx.param("groupBy"),
        page_token=ctx.param("pageToken"),
        limit=ctx.param("limit"),
    )


def usage_routes() -> list[Route]:
    routes = []
    answers = (Answer(200, "Usage"),)
    for prefix in NAMESPACE_PREFIXES:
        agent = f"{prefix}/agents/<agent>"
        routes += [
            Route("GET", f"{prefix}/usage", namespace_usage,
                  "Model tokens the namespace's turns spent in a time range.",
                  tags=("usage",), query=QUERY, answers=answers),
            Route("GET", f"{agent}/usage", agent_usage,
                  "Model tokens the agent's turns spent in a time range.",
                  tags=("usage",), query=QUERY, answers=answers),
            Route("GET", f"{agent}/sessions/<session_id>/usage", session_usage,
                  "Model tokens the session's turns spent in a time range.",
                  tags=("usage",), query=QUERY, answers=answers),
        ]  # fmt: skip
    return routes
