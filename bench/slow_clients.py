"""Benchmark: does the gateway keep answering while slow clients hold connections open?

Starts a throwaway PostgreSQL and the gateway the way `talon dev` runs it (64 threads), opens
N attacking connections of one kind, then times a normal `GET /healthz` (a fresh connection
each time, one after another) for a while and reports the latencies.

    .venv/bin/python bench/slow_clients.py --connections 70 200
    .venv/bin/python bench/slow_clients.py --server functions-framework   # the CLI alone

Kinds of attack (`--kinds`), none sends a token:
  idle             connect, send nothing
  partial-headers  a request line and one header, then one more header line every 5 s
  unfinished-body  full headers of a 1 MB JSON POST to /v1/namespaces, 100 bytes of the body,
                   then one more byte every 5 s
  ops-unfinished-body  the same to /mcp/talon-ops, which reads the body before anyone checks
                   a token (the gateway forwards it to the ops_mcp function)
  unread-reply     a complete `Connection: close` GET /healthz; the client never closes the
                   connection (the server has to)

A connection the server closes is opened again (checked every 5 s): the attacker keeps N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from talon.store.local_postgres import LocalPostgres, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-admin-token"
TRICKLE_SECONDS = 5.0

OPENERS: dict[str, bytes] = {
    "idle": b"",
    "partial-headers": b"POST /v1/namespaces HTTP/1.1\r\nHost: bench\r\n",
    "unfinished-body": (
        b"POST /v1/namespaces HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n" + b"{" + b" " * 99
    ),
    "ops-unfinished-body": (
        b"POST /mcp/talon-ops HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n" + b"{" + b" " * 99
    ),
    "unread-reply": b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
}
TRICKLES = {
    "partial-headers": b"X-Slow: 1\r\n",
    "unfinished-body": b" ",
    "ops-unfinished-body": b" ",
}

SERVERS = {
    # What `talon dev` runs since issue 13: Talon's gunicorn launcher.
    "talon": ["-m", "talon.serve"],
    # functions-framework's own CLI (gunicorn gthread, nothing of Talon's in the server).
    "functions-framework": ["-m", "functions_framework"],
}


@contextlib.contextmanager
def gateway(
    server: str, threads: int, extra_env: dict[str, str], durable: bool = False
) -> Iterator[tuple[int, int]]:
    """The gateway's port and process id."""
    root = Path(tempfile.mkdtemp(prefix="talon-bench-slow-"))
    root.chmod(0o755)
    pg = LocalPostgres(root / "pg", durable=durable)
    pg.start()
    process = None
    try:
        pg.ensure_database("talon")
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TALON_")},
            "TALON_CONTROL_PLANE_DATABASE_URL": pg.url("talon"),
            "TALON_ADMIN_TOKEN": TOKEN,
            "TALON_LOG_LEVEL": "ERROR",
            "THREADS": str(threads),
            # Nothing listens there: the attack's bodies never complete, so nothing is sent.
            "TALON_GATEWAY_OPS_MCP_UPSTREAM": "http://127.0.0.1:9",
            **extra_env,
        }
        process = subprocess.Popen(
            [sys.executable, *SERVERS[server], "--target", "gateway",
             "--source", str(ROOT / "functions" / "gateway" / "main.py"),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port("127.0.0.1", port, timeout=60)
        for _ in range(200):
            if probe(port, 5.0)[0] == 200:
                break
            time.sleep(0.1)
        yield port, process.pid
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def probe(port: int, timeout: float) -> tuple[int, float]:
    """GET /healthz on a fresh connection: (status, seconds); status 0 on timeout or error."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            reply = b""
            while b"\r\n" not in reply:
                remaining = timeout - (time.perf_counter() - started)
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    except (OSError, ValueError):
        status = 0
    return status, time.perf_counter() - started


class Attack:
    """N connections of one kind, kept open (and trickled) until stopped."""

    def __init__(self, port: int, kind: str, count: int) -> None:
        self.port, self.kind, self.count = port, kind, count
        self.sockets: list[socket.socket] = []
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if OPENERS[self.kind]:
            sock.sendall(OPENERS[self.kind])
        return sock

    def start(self) -> None:
        for _ in range(self.count):
            self.sockets.append(self._open())
        self._thread.start()

    def _trickle(self) -> None:
        # A connection the server dropped is opened again: the attacker keeps N open.
        while not self._stop.wait(TRICKLE_SECONDS):
            for i, sock in enumerate(self.sockets):
                try:
                    if self.kind in TRICKLES:
                        sock.sendall(TRICKLES[self.kind])
                    elif _closed_by_peer(sock):
                        raise ConnectionResetError
                except OSError:
                    sock.close()
                    with contextlib.suppress(OSError):
                        self.sockets[i] = self._open()
                        self.reopened += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for sock in self.sockets:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (whatever it answered before)."""
    try:
        sock.setblocking(False)
        while True:
            try:
                if sock.recv(65536) == b"":
                    return True
            except BlockingIOError:
                return False
    finally:
        sock.setblocking(True)


def measure(port: int, kind: str, count: int, seconds: float, timeout: float) -> dict[str, object]:
    attack = Attack(port, kind, count)
    attack.start()
    time.sleep(0.5)
    latencies: list[float] = []
    failed = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            status, elapsed = probe(port, timeout)
            if status == 200:
                latencies.append(elapsed)
            else:
                failed += 1
            time.sleep(0.2)
    finally:
        attack.stop()
    return {
        "kind": kind,
        "connections": count,
        "probes_ok": len(latencies),
        "probes_failed_or_timed_out": failed,
        "median_s": round(statistics.median(latencies), 3) if latencies else None,
        "max_s": round(max(latencies), 3) if latencies else None,
        "attacker_reconnects": attack.reopened,
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=sorted(SERVERS), default="talon")
    parser.add_argument("--connections", type=int, nargs="+", default=[70, 200])
    parser.add_argument("--kinds", nargs="+", choices=sorted(OPENERS), default=list(OPENERS))
    parser.add_argument("--threads", type=int, default=64, help="THREADS (talon dev: 64)")
    parser.add_argument("--seconds", type=float, default=30.0, help="probing per attack")
    parser.add_argument("--probe-timeout", type=float, default=60.0)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    # Stop the gateway and PostgreSQL on Ctrl-C or SIGTERM, also when started in the
    # background (which leaves SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    extra = dict(item.split("=", 1) for item in args.env)
    with gateway(args.server, args.threads, extra) as (port, _pid):
        idle = round(statistics.median(probe(port, 5.0)[1] for _ in range(20)), 4)
        header = {"server": args.server, "threads": args.threads, "unloaded_median_s": idle}
        print(json.dumps(header), flush=True)
        for count in args.connections:
            for kind in args.kinds:
                result = measure(port, kind, count, args.seconds, args.probe_timeout)
                print(json.dumps(result), flush=True)
                time.sleep(1)  # let the server settle between attacks
    return 0


if __name__ == "__main__":
    sys.exit(main())
