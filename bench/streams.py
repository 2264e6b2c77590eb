"""Benchmark: does the gateway keep serving while many quiet SSE streams are open?

Starts a throwaway PostgreSQL and the gateway the way `talon dev` runs it (`talon.serve`,
64 threads), applies the example manifests, opens one measuring stream on a session, then
`N` quiet streams (`--tokens` readers following `--sessions` idle sessions, as dashboards
would), and while they are open times:

- `GET /healthz` on a fresh connection, one after another (`--probes`);
- POST-to-first-event: a message posted on the measuring session (by its writer, on a kept
  connection) until the measuring stream shows its `message.created` event (no worker runs:
  the gateway itself writes that event before it answers 202).

A request that gets no answer within `--timeout` counts as failed. It reports how the
quiet streams were answered (200, 503 busy, 429 too_many_streams, or nothing yet). To see
the gateway as it was before the stream caps, lift them:

    .venv/bin/python bench/streams.py --streams 300
    .venv/bin/python bench/streams.py --streams 300 \\
        --env TALON_GATEWAY_MAX_OPEN_STREAMS=10000 --env TALON_GATEWAY_MAX_STREAMS_PER_TOKEN=10000
"""

from __future__ import annotations

import argparse
import json
import queue
import resource
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slow_clients import TOKEN, gateway, probe

from talon.cli.manifest_files import read_documents

ROOT = Path(__file__).resolve().parents[1]
BASE = "/v1/ns/acme/agents/customer-support/sessions"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def open_stream(port: int, token: str, session: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {BASE}/{session}/stream?heartbeat=15 HTTP/1.1\r\nHost: bench\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())  # fmt: skip
    return sock


def status_of(sock: socket.socket) -> str:
    """How a quiet stream was answered so far: its status, or `pending`."""
    sock.settimeout(0.05)
    try:
        head = sock.recv(64)
    except (TimeoutError, BlockingIOError):
        return "pending"
    except OSError:
        return "error"
    return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"


class Watcher(threading.Thread):
    """Reads the measuring stream; puts the arrival time of each event id in `arrivals`."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.arrivals: queue.Queue[float] = queue.Queue()

    def run(self) -> None:
        self.sock.settimeout(None)
        buffer = b""
        try:
            while chunk := self.sock.recv(65536):
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if b"event: message.created" in event:
                        self.arrivals.put(time.perf_counter())
        except OSError:
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=300, help="quiet streams to open")
    parser.add_argument("--tokens", type=int, default=50, help="readers sharing them")
    parser.add_argument("--sessions", type=int, default=300, help="idle sessions followed")
    parser.add_argument("--threads", type=int, default=64, help="THREADS (talon dev: 64)")
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    extra = dict(item.split("=", 1) for item in args.env)
    with gateway("talon", args.threads, extra) as port:
        url = f"http://127.0.0.1:{port}"
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=30)  # fmt: skip
        documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
        admin.post("/v1/apply", json={"items": documents}).raise_for_status()

        def token(role: str) -> str:
            body = {"name": f"{role}-{time.monotonic_ns()}", "role": role, "namespaces": ["acme"]}
            return str(admin.post("/v1/tokens", json=body).json()["token"])

        sessions = [admin.post(BASE, json={}).json()["id"] for _ in range(args.sessions)]
        measured = admin.post(BASE, json={}).json()["id"]
        writer, watcher_token = token("write"), token("read")
        readers = [token("read") for _ in range(args.tokens)]
        watcher = Watcher(open_stream(port, watcher_token, measured))
        watcher.start()
        time.sleep(0.5)
        opened = time.perf_counter()
        quiet = [open_stream(port, readers[i % len(readers)], sessions[i % len(sessions)])
                 for i in range(args.streams)]  # fmt: skip
        setup = time.perf_counter() - opened
        time.sleep(2)
        answered: dict[str, int] = {}
        for sock in quiet:
            status = status_of(sock)
            answered[status] = answered.get(status, 0) + 1

        health, health_failed = [], 0
        for _ in range(args.probes):
            status, seconds = probe(port, args.timeout)
            if status == 200:
                health.append(seconds)
            else:
                health_failed += 1
        first_event, post_failed = [], 0
        writer_headers = {"Authorization": f"Bearer {writer}"}
        poster = httpx.Client(base_url=url, timeout=args.timeout, headers=writer_headers)
        for i in range(args.probes):
            started = time.perf_counter()
            try:
                poster.post(f"{BASE}/{measured}/message",
                            json={"content": f"ping {i}"}).raise_for_status()  # fmt: skip
                first_event.append(watcher.arrivals.get(timeout=args.timeout) - started)
            except (httpx.HTTPError, queue.Empty):
                post_failed += 1
                poster.close()  # a request that timed out leaves its connection unusable
                poster = httpx.Client(base_url=url, timeout=args.timeout, headers=writer_headers)
            time.sleep(0.05)
        poster.close()
        for sock in quiet:
            sock.close()
        watcher.sock.close()
        admin.close()
        print(json.dumps({
            "threads": args.threads, "streams": args.streams, "tokens": args.tokens,
            "env": extra, "open_seconds": round(setup, 2), "quiet_streams_answered": answered,
            "healthz_p50_ms": percentile(health, 0.5), "healthz_p99_ms": percentile(health, 0.99),
            "healthz_failed": health_failed,
            "post_to_first_event_p50_ms": percentile(first_event, 0.5),
            "post_to_first_event_p99_ms": percentile(first_event, 0.99),
            "post_failed": post_failed,
        }), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
