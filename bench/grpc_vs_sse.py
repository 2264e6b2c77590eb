"""Benchmark: POST to first event (and to turn completion) over gRPC beside HTTP + SSE, on
the same stack and the same sessions' kind of turn.

Starts its own durable PostgreSQL (fsync on), the gateway (talon.serve, as `talon dev` runs
it), the gRPC server (`python -m talon.grpc`) and a `talon worker` with the in-process demo
model, then runs turns in rounds that alternate the two surfaces (so drift of the machine's
speed falls on both alike). Per turn, over HTTP: POST .../message, then GET .../stream from
the answer's streamFrom with untilTurnEnd; over gRPC: Sessions/PostMessage, then
Sessions/StreamEvents from stream_from with until_turn_end. Each client has its own session
and its own connection (HTTP keep-alive; one gRPC channel).

    .venv/bin/python bench/grpc_vs_sse.py --turns 300
    .venv/bin/python bench/grpc_vs_sse.py --turns 600 --clients 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

from talon.grpc.gen import sessions_pb2, sessions_pb2_grpc
from talon.store.local_postgres import LocalPostgres, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-admin-token"
SESSIONS = "/v1/ns/bench/agents/bot/sessions"
Turn = Callable[[int], tuple[float, float]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sse_client(base: str, session: str) -> Turn:
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    http.post(SESSIONS, json={"id": session}).raise_for_status()

    def turn(i: int) -> tuple[float, float]:
        started = time.perf_counter()
        reply = http.post(f"{SESSIONS}/{session}/message", json={"content": f"turn {i}"})
        reply.raise_for_status()
        accepted = reply.json()
        params = {"lastEventId": accepted["streamFrom"], "untilTurnEnd": "true"}
        first = None
        with http.stream("GET", f"{SESSIONS}/{session}/stream", params=params) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                if first is None:
                    first = time.perf_counter() - started
                if json.loads(line[6:])["type"] == "turn.completed":
                    return first, time.perf_counter() - started
        raise RuntimeError("the SSE stream ended before the turn completed")

    return turn


def grpc_client(address: str, session: str) -> Turn:
    channel = grpc.insecure_channel(address)
    stub = sessions_pb2_grpc.SessionsStub(channel)
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    where = {"namespace": "bench", "agent": "bot", "session_id": session}
    stub.CreateSession(sessions_pb2.CreateSessionRequest(**where), metadata=metadata)

    def turn(i: int) -> tuple[float, float]:
        started = time.perf_counter()
        accepted = stub.PostMessage(
            sessions_pb2.PostMessageRequest(**where, content=f"turn {i}"), metadata=metadata
        )
        request = sessions_pb2.StreamEventsRequest(
            **where, after_event_id=accepted.stream_from, until_turn_end=True
        )
        first = None
        for event in stub.StreamEvents(request, metadata=metadata, timeout=60):
            if first is None:
                first = time.perf_counter() - started
            if event.type == "turn.completed":
                return first, time.perf_counter() - started
        raise RuntimeError("the gRPC stream ended before the turn completed")

    return turn


def run_round(turns: list[Turn], count: int) -> list[tuple[float, float]]:
    """`count` turns per client, the clients in parallel threads."""
    results: list[tuple[float, float]] = []
    lock = threading.Lock()

    def one(turn: Turn) -> None:
        mine = [turn(i) for i in range(count)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=one, args=(turn,)) for turn in turns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def summary(timings: list[tuple[float, float]]) -> dict[str, object]:
    first = [f for f, _ in timings]
    done = [d for _, d in timings]
    return {
        "turns": len(timings),
        "first_event_ms": {"p50": round(percentile(first, 0.5) * 1000, 2),
                           "p99": round(percentile(first, 0.99) * 1000, 2)},
        "turn_complete_ms": {"p50": round(percentile(done, 0.5) * 1000, 2),
                             "p99": round(percentile(done, 0.99) * 1000, 2)},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=300, help="turns per surface")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients per surface")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="talon-bench-grpc-"))
    root.chmod(0o755)
    pg = LocalPostgres(root / "pg", durable=True)
    pg.start()
    pg.ensure_database("talon")
    port, grpc_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TALON_")},
        "TALON_CONTROL_PLANE_DATABASE_URL": pg.url("talon"),
        "TALON_CONTROL_PLANE_DATABASE_POOL_SIZE": "20",
        "TALON_ADMIN_TOKEN": TOKEN,
        "TALON_LOG_LEVEL": "WARNING",
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "talon.serve", "--target", "gateway",
             "--source", str(ROOT / "functions" / "gateway" / "main.py"),
             "--host", "127.0.0.1", "--port", str(port)],
            env={**env, "THREADS": str(max(8, args.clients * 3))}, cwd=ROOT,
        ))  # fmt: skip
        wait_for_port("127.0.0.1", port, timeout=60)
        base = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"})
        for _ in range(200):
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "talon.grpc", "--address", f"127.0.0.1:{grpc_port}"],
            env=env, cwd=ROOT,
        ))  # fmt: skip
        wait_for_port("127.0.0.1", grpc_port, timeout=60)
        items = [
            {"apiVersion": "talon.dev/v1alpha1", "kind": "Namespace",
             "metadata": {"name": "bench"}},
            {"apiVersion": "talon.dev/v1alpha1", "kind": "AgentTemplate",
             "metadata": {"name": "bench", "namespace": "bench"},
             "definition": {"modelPolicy": {"profiles": [
                 {"name": "zero", "model": {"provider": "demo", "name": "demo"}}]},
                 "systemPrompt": "Answer."}},
            {"apiVersion": "talon.dev/v1alpha1", "kind": "Agent",
             "metadata": {"name": "bot", "namespace": "bench"}, "spec": {"templateRef": "bench"}},
        ]  # fmt: skip
        http.post("/v1/apply", json={"items": items}).raise_for_status()
        http.close()
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "talon.cli.main", "worker", "--concurrency", "16"],
            env=env, cwd=ROOT,
        ))  # fmt: skip
        time.sleep(2)
        surfaces = {
            "sse": [sse_client(base, f"sse-{n}") for n in range(args.clients)],
            "grpc": [grpc_client(f"127.0.0.1:{grpc_port}", f"grpc-{n}")
                     for n in range(args.clients)],
        }  # fmt: skip
        for turns in surfaces.values():  # warm up: connections, caches, the worker
            run_round(turns, 5)
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in surfaces}
        per_round = max(1, args.turns // args.clients // args.rounds)
        for _ in range(args.rounds):
            for name, turns in surfaces.items():
                timings[name] += run_round(turns, per_round)
        result = {"clients": args.clients,
                  **{name: summary(found) for name, found in timings.items()}}  # fmt: skip
        print(json.dumps(result, indent=2))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
