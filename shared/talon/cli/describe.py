"""`talon describe KIND NAME`: an object, its status and the objects around it, laid out for a
person as `kubectl describe` does (a field per line, related objects as small tables)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from talon.cli.client import CliError, plain
from talon.cli.output import table
from talon.client import APIError, Client, Resource

RECENT_EVENTS = 15


def _field(name: str, value: Any) -> str:
    return f"{name + ':':<16}{'' if value is None else value}"


def _labels(metadata: dict[str, Any]) -> str:
    labels = metadata.get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def _section(title: str, body: str) -> list[str]:
    return [f"{title}:", *("  " + line for line in body.splitlines())]


def _header(item: Resource) -> list[str]:
    meta = item.metadata
    lines = [_field("Name", item.name)]
    if item.namespace:
        lines.append(_field("Namespace", item.namespace))
    lines += [_field("Kind", item.kind), _field("Labels", _labels(meta)),
              _field("Created", meta.get("creationTimestamp")),
              _field("Generation", meta.get("generation"))]  # fmt: skip
    status = item.status or {}
    if status.get("phase"):
        lines.append(_field("Phase", status["phase"]))
    if status.get("message"):
        lines.append(_field("Message", status["message"]))
    return lines


def _binds(binding: dict[str, Any], agent: Resource) -> bool:
    """Whether an MCPBinding's `agents` (names, or a label selector) takes in the agent."""
    agents = (binding.get("spec") or {}).get("agents") or {}
    if agent.name in (agents.get("names") or []):
        return True
    match = (agents.get("selector") or {}).get("matchLabels") or {}
    labels = agent.metadata.get("labels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def describe_agent(client: Client, namespace: str, name: str) -> list[str]:
    agent = client.get("agents", name, namespace=namespace)
    status = agent.status or {}
    effective = status.get("effective") or {}
    lines = _header(agent)
    template = (status.get("resolvedFrom") or {}).get("template") or {}
    lines.append(_field("Template", (agent.spec or {}).get("templateRef")))
    if template:
        version = f"resourceVersion {template.get('resourceVersion')}"
        lines.append(_field("Resolved from", f"template {template.get('name')} ({version}, "
                            f"generation {template.get('generation')})"))  # fmt: skip
    features = effective.get("features") or {}
    if features:
        lines.append(
            _field(
                "Features", ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(features.items()))
            )
        )
    profiles = (effective.get("modelPolicy") or {}).get("profiles") or []
    rows = [[p.get("name"), (p.get("model") or {}).get("provider"),
             (p.get("model") or {}).get("name")] for p in profiles]  # fmt: skip
    if rows:
        lines += _section("Model profiles", table(rows, ["NAME", "PROVIDER", "MODEL"]))
    servers = {s.name: s for s in client.list("mcp-servers", namespace=namespace)}
    refs = effective.get("mcpServerRefs") or []
    rows = [[ref, (servers[ref].spec or {}).get("url", "") if ref in servers else "<missing>"]
            for ref in refs]  # fmt: skip
    lines += _section("MCP servers", table(rows, ["NAME", "URL"]) if rows else "<none>")
    bindings = [plain(b) for b in client.list("mcp-bindings", namespace=namespace)]
    mine = [b for b in bindings if _binds(b, agent)]
    rows = []
    for b in mine:
        spec = b.get("spec") or {}
        tools = spec.get("tools") or {}
        rows.append([b["metadata"]["name"], spec.get("server", ""),
                     ",".join(tools.get("allow") or []) or "*",
                     ",".join(tools.get("deny") or []) or "-",
                     str(spec.get("readOnly", "")).lower()])  # fmt: skip
    headers = ["NAME", "SERVER", "ALLOW", "DENY", "READ-ONLY"]
    lines += _section("Bindings", table(rows, headers) if rows else "<none>")
    lines += _tools(client, namespace, name)
    return lines


def _tools(client: Client, namespace: str, agent: str) -> list[str]:
    """The agent's effective tools by name and where each comes from, and each MCP server's
    state, from `GET .../agents/{agent}/tools` (the worker's own sources)."""
    try:
        answer = client.agent_tools(namespace, agent)
    except APIError as exc:  # e.g. 409: the agent does not resolve
        return _section("Tools", f"<unknown: {exc.message}>")
    rows = []
    for tool in answer.get("tools") or []:
        source = tool.get("source") or {}
        kind = source.get("type", "")
        where = {
            "skill": f"skill {source.get('skill')}",
            "mcp": f"mcp {source.get('server')} ({source.get('tool')})",
        }.get(kind, kind)
        rows.append([tool.get("name"), where, ",".join(source.get("allowedBy") or []) or "-",
                     "yes" if tool.get("readOnlyHint") else "-"])  # fmt: skip
    lines = _section("Tools", table(rows, ["NAME", "SOURCE", "ALLOWED BY", "READ-ONLY"])
                     if rows else "<none>")  # fmt: skip
    servers = [[s.get("server"), s.get("state"), len(s.get("tools") or []),
                ",".join(s.get("withheld") or []) or "-", s.get("error") or ""]
               for s in answer.get("servers") or []]  # fmt: skip
    if servers:
        headers = ["SERVER", "STATE", "TOOLS", "WITHHELD", "ERROR"]
        lines += _section("Tool servers", table(servers, headers))
    return lines


def describe_session(client: Client, namespace: str, agent: str, session_id: str) -> list[str]:
    session = client.get_session(namespace, agent, session_id)
    extra = session.model_extra or {}
    lines = [_field("Session", session.id), _field("Agent", session.agent),
             _field("Namespace", session.ns), _field("Status", session.status),
             _field("Created", extra.get("createdAt")), _field("Updated", extra.get("updatedAt")),
             _field("Messages", session.message_count),
             _field("Last event", session.last_event_id)]  # fmt: skip
    if session.metadata:
        dumped = yaml.safe_dump(session.metadata, sort_keys=True).rstrip()
        lines += _section("Metadata", dumped)
    turn = session.active_turn
    rows = [[turn.get("id"), turn.get("state"), turn.get("attempts"), turn.get("startedAt")]
            ] if turn else []  # fmt: skip
    open_turns = table(rows, ["TURN", "STATE", "ATTEMPTS", "STARTED"]) if rows else "<none>"
    lines += _section(f"Open turns ({session.queued_turns} queued)", open_turns)
    steps = [[s.get("step"), s.get("state")] for s in extra.get("stream") or []]
    if steps:
        lines += _section("Latest turn's steps", table(steps, ["STEP", "STATE"]))
    lines += _section("Recent events", _recent_events(client, namespace, agent, session.id,
                                                      session.last_event_id))  # fmt: skip
    return lines


def _recent_events(client: Client, namespace: str, agent: str, session_id: str, last: int) -> str:
    if last <= 0:
        return "<none>"
    rows = []
    events = client.stream(namespace, agent, session_id, after=max(0, last - RECENT_EVENTS))
    for event in events:
        data = event.data
        detail = data.get("step") or data.get("message") or data.get("reason") or ""
        rows.append([event.id, event.type, (event.turn_id or "")[:8], detail])
        if event.id >= last:
            break
    events.close()  # the connection, now
    return table(rows, ["ID", "TYPE", "TURN", "DETAIL"])


def describe_schedule(client: Client, namespace: str, name: str) -> list[str]:
    schedule = client.get("schedules", name, namespace=namespace)
    spec = schedule.spec or {}
    target = spec.get("target") or {}
    lines = _header(schedule)
    lines += [
        _field("Schedule", spec.get("cron") or spec.get("at")),
        _field("Timezone", spec.get("timezone")),
        _field("Enabled", str(spec.get("enabled", "")).lower()),
        _field("Target", f"agent {target.get('agent')}, session {target.get('sessionId')}"),
    ]
    fires = client.schedule_fires(namespace, name)  # fmt: skip
    lines.append(_field("Next fire", fires.get("nextFireAt") or "<none>"))
    rows = [[f.get("fireAt"), f.get("reason"), f.get("outcome"), f.get("turnId") or "-",
             f.get("error") or ""] for f in fires.get("items") or []]  # fmt: skip
    headers = ["FIRE AT", "REASON", "OUTCOME", "TURN", "ERROR"]
    lines += _section("Last fires", table(rows, headers) if rows else "<none>")
    return lines


def describe_other(client: Client, kind: str, namespace: str | None, name: str) -> list[str]:
    item = client.get(kind, name, namespace=namespace)
    body = item.spec if item.spec is not None else item.definition
    lines = _header(item)
    if body:
        title = "Spec" if item.spec is not None else "Definition"
        lines += _section(title, yaml.safe_dump(body, sort_keys=False).rstrip())
    return lines


def describe(
    client: Client, plural: str, namespaced: bool, namespace: str | None, name: str,
    agent: str | None,
) -> str:  # fmt: skip
    if namespaced and not namespace:
        raise CliError(f"{plural} live in a namespace: pass -n NAMESPACE")
    if plural == "agents":
        lines = describe_agent(client, namespace or "", name)
    elif plural == "sessions":
        if not namespace or not agent:
            raise CliError("sessions need -n NAMESPACE and --agent AGENT")
        lines = describe_session(client, namespace, agent, name)
    elif plural == "schedules":
        lines = describe_schedule(client, namespace or "", name)
    else:
        lines = describe_other(client, plural, namespace, name)
    return "\n".join(line.rstrip() for line in lines)
