"""Example MCP servers (the `mcp` SDK, streamable HTTP) standing in for Stripe and HubSpot,
with canned data: what the example manifests' `stripe-readonly` and `hubspot-readonly` point
at in `talon dev`, and the real servers the tests run. A few read-only tools each, plus write
tools and a slow tool so binding policy and timeouts have something to bite on. Calls are
counted per tool, so tests can prove a refused call never reached the server.

    python -m talon.examples.mcp_servers stripe 8091
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from mcp.server import MCPServer
from mcp.types import ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=True)

INVOICES = {
    "cus_acme_001": [
        {"id": "in_1001", "amount_due": 120_000, "currency": "usd", "status": "open",
         "due_date": "2026-12-05"},
        {"id": "in_0990", "amount_due": 120_000, "currency": "usd", "status": "paid",
         "due_date": "2026-11-05"},
    ],
}  # fmt: skip
SUBSCRIPTIONS = {
    "cus_acme_001": [{"id": "sub_77", "plan": "enterprise", "renews_on": "2026-12-07"}],
}
COMPANIES = {"acme": {"id": "co_9", "name": "Acme Corp", "owner": "dana@acme.example"}}


def stripe_server(calls: Counter[str]) -> MCPServer:
    server = MCPServer("stripe-readonly", instructions="Stripe billing data, read-only.")

    @server.tool(description="List a customer's invoices, newest first.", annotations=READ_ONLY)
    def list_invoices(customer_id: str) -> list[dict[str, Any]]:
        calls["list_invoices"] += 1
        return INVOICES.get(customer_id, [])

    @server.tool(description="A customer's active subscriptions.", annotations=READ_ONLY)
    def get_subscriptions(customer_id: str) -> list[dict[str, Any]]:
        calls["get_subscriptions"] += 1
        return SUBSCRIPTIONS.get(customer_id, [])

    @server.tool(description="Refund an invoice.", annotations=WRITES)
    def refund_invoice(invoice_id: str) -> str:
        calls["refund_invoice"] += 1
        return f"refunded {invoice_id}"

    @server.tool(description="Search invoices slowly (for timeout tests).", annotations=READ_ONLY)
    async def search_invoices(query: str, seconds: float = 0.0) -> str:
        calls["search_invoices"] += 1
        await asyncio.sleep(seconds)
        return f"no invoices match {query!r}"

    return server


def hubspot_server(calls: Counter[str]) -> MCPServer:
    server = MCPServer("hubspot-readonly", instructions="HubSpot CRM records, read-only.")

    @server.tool(description="Find a company by name.", annotations=READ_ONLY)
    def search_companies(name: str) -> list[dict[str, Any]]:
        calls["search_companies"] += 1
        return [c for key, c in COMPANIES.items() if name.lower() in key]

    @server.tool(description="Delete a contact.", annotations=WRITES)
    def delete_contact(contact_id: str) -> str:
        calls["delete_contact"] += 1
        return f"deleted {contact_id}"

    @server.tool(description="Log a note on a company (writes).", annotations=WRITES)
    def create_note(company_id: str, text: str) -> str:
        calls["create_note"] += 1
        return f"note on {company_id}"

    return server


FIXTURES = {"stripe": stripe_server, "hubspot": hubspot_server}


class RunningServer:
    """An MCP fixture served by uvicorn on a free localhost port, in a thread; `stateless`
    False keeps a session per client (a new instance on the same port knows none)."""

    def __init__(self, kind: str, port: int = 0, *, stateless: bool = True) -> None:
        self.calls: Counter[str] = Counter()
        self.headers_seen: list[dict[str, str]] = []
        server = FIXTURES[kind](self.calls)
        app = server.streamable_http_app(stateless_http=stateless, json_response=True)
        app.add_middleware(_RecordHeaders, seen=self.headers_seen)
        if port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"
        # A stateful server's clients hold a stream open: closing gives them a second.
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                timeout_graceful_shutdown=1)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"MCP fixture {kind} did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


class _RecordHeaders:
    def __init__(self, app: Any, seen: list[dict[str, str]]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


if __name__ == "__main__":
    running = RunningServer(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(running.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        running.close()
