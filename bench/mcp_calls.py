"""Benchmark: a turn's MCP tool calls, each on a session of its own against sharing the
turn's session (`runtime/tools/mcp_sessions.py`), against the example Stripe MCP server
(streamable HTTP on localhost, in its own process).

    .venv/bin/python bench/mcp_calls.py --calls 3 --turns 30

Prints, per way, the wall time of a turn's calls (p50, the turn's sessions ended included)
and the calling process's CPU per turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from talon.runtime.tools.mcp_client import call_tool
from talon.runtime.tools.mcp_sessions import TurnSessions
from talon.tenancy.egress import EgressPolicy

EGRESS = EgressPolicy(frozenset({"http"}), allow_loopback=True)
ARGUMENTS = {"customer_id": "cus_acme_001"}


def measure(turn: Callable[[], None], turns: int) -> dict[str, float]:
    for _ in range(3):  # warm: imports, the TLS context, the server's first requests
        turn()
    walls = []
    cpu = time.process_time()
    for _ in range(turns):
        started = time.perf_counter()
        turn()
        walls.append(time.perf_counter() - started)
    return {
        "wall_ms_p50": round(statistics.median(walls) * 1000, 1),
        "cpu_ms_per_turn": round((time.process_time() - cpu) / turns * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3, help="tool calls per turn")
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "talon.examples.mcp_servers", "stripe"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    try:

        def alone() -> None:
            for _ in range(args.calls):
                assert not call_tool(url, {}, "list_invoices", ARGUMENTS, 10, EGRESS).is_error

        def shared() -> None:
            sessions = TurnSessions()
            try:
                for _ in range(args.calls):
                    result = sessions.call_tool(url, {}, "list_invoices", ARGUMENTS, 10, EGRESS)
                    assert not result.is_error
            finally:
                sessions.close()

        result: dict[str, Any] = {"calls_per_turn": args.calls, "turns": args.turns}
        result["a_session_per_call"] = measure(alone, args.turns)
        result["the_turns_session"] = measure(shared, args.turns)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
