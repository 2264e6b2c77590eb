"""Minimal valid manifests for each kind, and the order they must be created in."""

from __future__ import annotations

from typing import Any

V = "talon.dev/v1alpha1"


def manifest(kind: str, name: str, ns: str | None, body: dict[str, Any], **meta: Any) -> dict:
    metadata: dict[str, Any] = {"name": name, **meta}
    if ns is not None:
        metadata["namespace"] = ns
    return {"apiVersion": V, "kind": kind, "metadata": metadata, **body}


def namespace(name: str) -> dict[str, Any]:
    return manifest("Namespace", name, None, {"spec": {"description": f"{name} team"}})


def mcp_server(ns: str, name: str = "tools", url: str = "http://127.0.0.1:9/mcp") -> dict:
    return manifest("MCPServer", name, ns, {"spec": {"url": url}})


def knowledge(ns: str, name: str = "faq", content: str = "# FAQ\nBe kind.") -> dict:
    return manifest("Knowledge", name, ns, {"spec": {"title": "FAQ", "content": content}})


def template(ns: str, name: str = "support", servers: list[str] | None = None, prompt: str = "Hi"):
    return manifest(
        "AgentTemplate",
        name,
        ns,
        {
            "definition": {
                "customSpec": {"features": [{"name": "customer_id", "required": True}]},
                "modelPolicy": {
                    "profiles": [{"name": "primary", "model": {"provider": "demo", "name": "echo"}}]
                },
                "systemPrompt": prompt,
                "mcpServerRefs": servers or [],
            }
        },
    )


def agent(ns: str, name: str = "bot", template_ref: str = "support", **labels: str) -> dict:
    spec = {"templateRef": template_ref, "features": {"customer_id": "cus_1"}}
    return manifest("Agent", name, ns, {"spec": spec}, labels=labels)


def binding(ns: str, name: str = "bind", server: str = "tools", agent_name: str = "bot") -> dict:
    spec = {"server": server, "agents": {"names": [agent_name]}, "tools": {"allow": ["get_*"]}}
    return manifest("MCPBinding", name, ns, {"spec": spec})


def schedule(ns: str, name: str = "wake", agent_name: str = "bot") -> dict[str, Any]:
    spec = {
        "kind": "cron",
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Paris",
        "target": {"agent": agent_name, "sessionId": "daily"},
        "inputMessage": "Good morning.",
    }
    return manifest("Schedule", name, ns, {"spec": spec})


def full_set(ns: str) -> list[dict[str, Any]]:
    """One of every namespaced kind, wired together, in creation order."""
    return [
        mcp_server(ns),
        knowledge(ns),
        template(ns, servers=["tools"]),
        agent(ns),
        binding(ns),
        schedule(ns),
    ]


# plural -> (sample factory, field holding the spec, a change to PATCH in)
NAMESPACED = {
    "mcp-servers": ("MCPServer", "spec", {"spec": {"description": "patched"}}),
    "knowledge": ("Knowledge", "spec", {"spec": {"title": "patched"}}),
    "agent-templates": ("AgentTemplate", "definition", {"definition": {"systemPrompt": "patched"}}),
    "agents": ("Agent", "spec", {"spec": {"features": {"customer_id": "patched"}}}),
    "mcp-bindings": ("MCPBinding", "spec", {"spec": {"readOnly": False}}),
    "schedules": ("Schedule", "spec", {"spec": {"enabled": False}}),
}
