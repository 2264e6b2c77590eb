"""Benchmark: how many quiet SSE streams one gateway process holds, and whether it keeps
serving while they are open.

Starts a durable throwaway PostgreSQL and the gateway (`--server talon`: as `talon dev` runs
it, `python -m talon.serve`, whose stream hub holds open streams without a thread each;
`--server functions-framework`: each stream holds one of its THREADS), applies the example
manifests, opens one measuring stream on a session, then `N` quiet streams (`--tokens`
readers following `--sessions` idle sessions, as dashboards would; at most `--window`
waiting for their answer at once, as independent clients arrive), and reports:

- setup: from the first quiet stream's connect until every one has its response head and
  first line (or a refusal); how they were answered (200, 503 busy, 429 too_many_streams,
  nothing yet);
- the gateway's RSS (gunicorn and its worker) before and with the streams open, and with
  `--churn N`, after each of N rounds of opening and closing them all first (a slot, a
  subscription or memory kept by a closed stream shows as refusals or growth);
- the gateway's CPU (share of one core) over `--settle` seconds with the streams quiet,
  their heartbeats (each with a look at the table) under way;
- then, while they are open: `GET /healthz` on a fresh connection (`--probes` times), and
  POST-to-first-event: a message posted on the measuring session (by its writer, on a kept
  connection) until the measuring stream shows its `message.created` event (no worker runs:
  the gateway itself writes that event before it answers 202).

A request that gets no answer within `--timeout` counts as failed.

    .venv/bin/python bench/streams.py --streams 5000
    .venv/bin/python bench/streams.py --server functions-framework --streams 300
"""

from __future__ import annotations

import argparse
import json
import queue
import resource
import selectors
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slow_clients import TOKEN, gateway, probe
from turns import cpu_seconds, rss_kib, with_descendants

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


def open_quiet(
    port: int, tokens: list[str], sessions: list[str], count: int, window: int, timeout: float
) -> tuple[list[socket.socket], Counter[str], float]:
    """`count` streams opened with at most `window` unanswered at once: the sockets, how
    they were answered, and the seconds until the last one was."""
    selector = selectors.DefaultSelector()
    answered: Counter[str] = Counter()
    opened: list[socket.socket] = []
    heads: dict[socket.socket, bytes] = {}
    started = time.perf_counter()
    deadline = started + timeout
    while len(opened) < count or heads:
        while len(opened) < count and len(heads) < window:
            i = len(opened)
            sock = open_stream(port, tokens[i % len(tokens)], sessions[i % len(sessions)])
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            opened.append(sock)
            heads[sock] = b""
        for key, _ in selector.select(max(0.0, deadline - time.perf_counter())):
            sock = key.fileobj  # type: ignore[assignment]
            try:
                chunk = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            heads[sock] += chunk
            data = heads[sock]
            status = data.split(b" ", 2)[1].decode() if b"\r\n\r\n" in data else None
            if not chunk or (status is not None and (status != "200" or b"retry:" in data)):
                answered[status or "closed"] += 1
                selector.unregister(sock)
                del heads[sock]
        if time.perf_counter() > deadline:
            answered["pending"] += len(heads)
            break
    selector.close()
    for sock in opened:
        sock.setblocking(True)
    return opened, answered, time.perf_counter() - started


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
    parser.add_argument("--window", type=int, default=256,
                        help="quiet streams waiting for their answer at once")  # fmt: skip
    # Past a minute: every quiet stream's once-a-minute look at the table falls inside.
    parser.add_argument("--settle", type=float, default=65.0,
                        help="seconds between the last stream opened and the measures")  # fmt: skip
    parser.add_argument("--churn", type=int, default=0,
                        help="rounds of opening and closing the quiet streams first")  # fmt: skip
    parser.add_argument("--server", choices=("talon", "functions-framework"), default="talon")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    extra = dict(item.split("=", 1) for item in args.env)
    server = {"talon": "talon", "functions-framework": "functions-framework"}[args.server]
    with gateway(server, args.threads, extra, durable=True) as (port, server_pid):
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
        served = with_descendants(server_pid)
        rss_before = sum(rss_kib(pid) for pid in served)
        churn = []  # RSS after each round of opening and closing every quiet stream
        for _ in range(args.churn):
            opened, churned, _seconds = open_quiet(port, readers, sessions, args.streams,
                                                   args.window, timeout=120)  # fmt: skip
            time.sleep(1)
            for sock in opened:
                sock.close()
            time.sleep(2)
            rss = sum(rss_kib(pid) for pid in with_descendants(server_pid))
            churn.append({"answered": dict(churned), "rss_mib": round(rss / 1024, 1)})
        quiet, answered, setup = open_quiet(port, readers, sessions, args.streams, args.window,
                                            timeout=120)  # fmt: skip
        # Measured once the streams' heartbeats (each a look at the table) are under way.
        cpu_before = cpu_seconds(with_descendants(server_pid))
        time.sleep(args.settle)
        idle_cpu = (cpu_seconds(with_descendants(server_pid)) - cpu_before) / args.settle
        rss_open = sum(rss_kib(pid) for pid in with_descendants(server_pid))

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
            "server": args.server, "threads": args.threads, "streams": args.streams,
            "tokens": args.tokens, "sessions": args.sessions, "env": extra,
            "setup_seconds": round(setup, 2), "quiet_streams_answered": dict(answered),
            "gateway_rss_mib": {"before": round(rss_before / 1024, 1),
                                "streams_open": round(rss_open / 1024, 1)},
            "churn": churn,
            # Share of one core the gateway spends holding the quiet streams (heartbeats).
            "gateway_cpu_while_quiet": round(idle_cpu, 3),
            "healthz_p50_ms": percentile(health, 0.5), "healthz_p99_ms": percentile(health, 0.99),
            "healthz_failed": health_failed,
            "post_to_first_event_p50_ms": percentile(first_event, 0.5),
            "post_to_first_event_p99_ms": percentile(first_event, 0.99),
            "post_failed": post_failed,
        }), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
