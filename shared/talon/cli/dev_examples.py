"""`talon dev`'s example MCP servers on free ports, and the example MCPServer objects pointed at
them: rewritten in the manifests applied on the first start, re-pointed on every later start
(the ports change; a URL a user set by hand is left alone).

The example manifests (manifests/10-mcp-servers.yaml) name the servers by their historical
fixed ports, `http://127.0.0.1:8091/mcp` (stripe) and `:8092` (hubspot); an MCPServer whose
URL is one of those, or the one the previous start set (remembered in the data dir), is an
example's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from talon.cli.client import plain
from talon.cli.manifest_files import Document
from talon.client import Client

# The example servers, and the port each had in the manifests.
EXAMPLE_SERVERS = {"stripe": 8091, "hubspot": 8092}
STATE_FILE = "example-tools.json"  # {"stripe": "http://127.0.0.1:PORT/mcp", ...}
_SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "createdAt",
                  "updatedAt")  # fmt: skip


def example_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/mcp"


def _old_urls(data_dir: Path) -> dict[str, str]:
    """Each example URL an MCPServer may still have -> the example it belongs to."""
    old = {example_url(port): kind for kind, port in EXAMPLE_SERVERS.items()}
    try:
        previous = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        previous = {}
    if isinstance(previous, dict):
        old.update({str(url): str(kind) for kind, url in previous.items()})
    return old


def pointed(documents: list[Document], urls: dict[str, str], data_dir: Path) -> list[Document]:
    """The manifests with each example MCPServer's URL set to where its server runs now."""
    old = _old_urls(data_dir)
    result = []
    for document in documents:
        body = document.body
        spec = body.get("spec") if isinstance(body, dict) else None
        if isinstance(body, dict) and body.get("kind") == "MCPServer" and isinstance(spec, dict):
            kind = old.get(str(spec.get("url")))
            if kind in urls:
                body = {**body, "spec": {**spec, "url": urls[kind]}}
        result.append(Document(document.source, body))
    return result


def repoint(
    client: Client, urls: dict[str, str], data_dir: Path, say: Callable[[str], None]
) -> None:
    """Point the example MCPServer objects already stored at the servers' new ports, then
    remember the URLs for the next start."""
    old = _old_urls(data_dir)
    for namespace in [ns.name for ns in client.list("namespaces")]:
        for server in client.list("mcp-servers", namespace=namespace):
            url = (server.spec or {}).get("url")
            kind = old.get(str(url))
            if kind not in urls or url == urls[kind]:
                continue
            manifest: dict[str, Any] = plain(server)
            manifest.pop("status", None)
            manifest["metadata"] = {k: v for k, v in manifest["metadata"].items()
                                    if k not in _SERVER_FIELDS}  # fmt: skip
            manifest["spec"] = {**manifest["spec"], "url": urls[kind]}
            client.apply([manifest])
            say(f"  mcpserver/{server.name} -n {namespace} now at {urls[kind]}")
    (data_dir / STATE_FILE).write_text(json.dumps(urls) + "\n")
