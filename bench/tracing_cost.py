"""Benchmark: what traces and metrics cost. Runs `bench/turns.py` in rounds alternating
telemetry off (no OTEL_* variables: the API's no-op spans and instruments) and on (OTLP/HTTP
to a local sink that accepts every export, at the SDK's default sampling: parent-based,
always on), so the machine's drift falls on both, and prints turns/s of each and their ratio.

    .venv/bin/python bench/tracing_cost.py --rounds 3 --clients 16 --turns 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class Sink:
    """An OTLP/HTTP endpoint that accepts everything (an empty protobuf answer is a valid
    Export*ServiceResponse) and counts what it received."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.requests += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def run_turns(args: argparse.Namespace, telemetry: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | telemetry
    command = [sys.executable, str(ROOT / "bench" / "turns.py"), "--clients", str(args.clients),
               "--turns", str(args.turns)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{") :])
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--turns", type=int, default=2000)
    args = parser.parse_args()
    sink = Sink()
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_SERVICE_NAME": "talon-bench"}
    rates: dict[str, list[float]] = {"off": [], "on": []}
    first_event: dict[str, list[float]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        for label, telemetry in (("off", {}), ("on", on)):
            result = run_turns(args, telemetry)
            rates[label].append(result["turns_per_second"])
            first_event[label].append(result["first_event_ms"]["p50"])
            print(f"round {round_ + 1} telemetry {label}: {result['turns_per_second']} turns/s, "
                  f"first event p50 {result['first_event_ms']['p50']} ms", flush=True)  # fmt: skip
    off, on_rate = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(json.dumps({
        "clients": args.clients, "turns": args.turns, "rounds": args.rounds,
        "turns_per_second_off": rates["off"], "turns_per_second_on": rates["on"],
        "median_off": off, "median_on": on_rate,
        "on_over_off": round(on_rate / off, 3),
        "first_event_p50_ms_off": first_event["off"], "first_event_p50_ms_on": first_event["on"],
        "exports_received": sink.requests, "bytes_received": sink.bytes,
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
