"""Benchmark: crash takeover on the Pub/Sub push path, against the gcloud emulator.

`bench/crash.py`'s measurement with the `gcp_pubsub` driver: the gateway publishes through
the emulator, which pushes to `--instances` dispatch function instances (functions-framework
processes) behind one endpoint (a round-robin TCP proxy standing in for Cloud Run's front
end, skipping an instance that refuses the connection). Chat-like clients post a message and
wait for its turn (one model call of `--model-seconds`); meanwhile the benchmark SIGKILLs an
instance that holds a running turn and times until another instance holds each of its turns
(the emulator redelivers the push the dead instance never answered); then the instance is
started again. The emulator redelivers a push whose connection failed at once; Pub/Sub waits
for the subscription's retry policy (`minimum_backoff`, 1 s in Terraform) first, so add that
for a production figure.

    .venv/bin/python bench/crash_push.py --kills 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from crash import ROOT, SESSIONS, TOKEN, ModelServer, percentile, query, watch_takeover
from pubsub_stack import Emulator, broker_env, push_topology

from talon.store.local_postgres import LocalPostgres, free_port, wait_for_port


class AnswerScript:
    """Every model call answers after `seconds` (the dispatch instances offer no test tool)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __bool__(self) -> bool:
        return True

    def popleft(self) -> dict[str, Any]:
        return {"hang": self.seconds, "content": "done"}


def proxy(listen: int, targets: list[int]) -> threading.Thread:
    """A round-robin TCP proxy on `listen` to the `targets` ports, in its own thread."""
    turn = [0]

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(targets)):
            port = targets[turn[0] % len(targets)]
            turn[0] += 1
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            return
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", listen)
        async with server:
            await server.serve_forever()  # a daemon thread: ends with the benchmark

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", listen)
    return thread


class Instances:
    """Dispatch function instances, one per port, each in its own process group."""

    def __init__(self, ports: list[int], env: dict[str, str]) -> None:
        self.ports = ports
        self.env = env
        self.running: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}  # pgid: (port, ..)

    def start(self, port: int) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", "dispatch",
             "--source", str(ROOT / "functions" / "dispatch" / "main.py"),
             "--host", "127.0.0.1", "--port", str(port)],
            env=self.env, cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.running[process.pid] = (port, process)
        deadline = time.monotonic() + 60
        while True:  # built (services, worker and its lock) once it serves
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    return
            assert time.monotonic() < deadline, "a dispatch instance did not start"
            time.sleep(0.05)

    def group_of(self, pid: int) -> int | None:
        with contextlib.suppress(OSError):
            group = os.getpgid(pid)
            return group if group in self.running else None
        return None

    def kill(self, group: int) -> int:
        os.killpg(group, signal.SIGKILL)
        port, process = self.running.pop(group)
        process.wait(timeout=10)
        return port

    def stop_all(self) -> None:
        for group in list(self.running):
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGTERM)
        for _, process in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.running.clear()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=200, help="total, across the sessions")
    parser.add_argument("--model-seconds", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    root = Path(tempfile.mkdtemp(prefix="talon-bench-crash-push-"))
    root.chmod(0o755)
    pg = LocalPostgres(root / "pg", durable=True)
    pg.start()
    pg.ensure_database("talon")
    emulator = Emulator()
    model = ModelServer()
    model.script = AnswerScript(args.model_seconds)  # type: ignore[assignment]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TALON_")},
        **broker_env(emulator),
        "TALON_CONTROL_PLANE_DATABASE_URL": pg.url("talon"),
        "TALON_ADMIN_TOKEN": TOKEN,
        "TALON_LOG_LEVEL": "WARNING",
    }
    port = free_port()
    gateway = None
    instances = Instances([free_port() for _ in range(args.instances)], env)
    watcher = pg.connect("talon")
    watcher.autocommit = True
    try:
        emulator.wait()
        endpoint = free_port()
        push_topology(f"http://127.0.0.1:{endpoint}/")
        proxy(endpoint, instances.ports)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", "gateway",
             "--source", str(ROOT / "functions" / "gateway" / "main.py"),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        wait_for_port("127.0.0.1", port)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                            headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if http.get("/healthz").status_code == 200:
                    break
            time.sleep(0.1)
        profile = {"name": "primary", "model": {"provider": "openai", "name": "m",
                                                "baseUrl": model.url}}  # fmt: skip
        items = [
            {"apiVersion": "talon.dev/v1alpha1", "kind": "Namespace",
             "metadata": {"name": "bench"}},
            {"apiVersion": "talon.dev/v1alpha1", "kind": "AgentTemplate",
             "metadata": {"name": "bench", "namespace": "bench"},
             "definition": {"modelPolicy": {"profiles": [profile]}, "systemPrompt": "Answer."}},
            {"apiVersion": "talon.dev/v1alpha1", "kind": "Agent",
             "metadata": {"name": "bot", "namespace": "bench"}, "spec": {"templateRef": "bench"}},
        ]  # fmt: skip
        http.post("/v1/apply", json={"items": items}).raise_for_status()
        for instance_port in instances.ports:
            instances.start(instance_port)
        for s in range(args.sessions):
            http.post(SESSIONS, json={"id": f"s{s}"}).raise_for_status()
        per_session = args.turns // args.sessions
        client_errors: list[str] = []

        def client(s: int) -> None:
            connection = pg.connect("talon")
            connection.autocommit = True
            try:
                for i in range(per_session):
                    reply = http.post(f"{SESSIONS}/s{s}/message", json={"content": f"turn {i}"})
                    reply.raise_for_status()
                    turn = reply.json()["turnId"]
                    while query(connection, "SELECT 1 FROM turns WHERE id = %s "
                                "AND state IN ('queued', 'running')", (turn,)):  # fmt: skip
                        time.sleep(0.05)
            except Exception as exc:  # reported, and the run fails
                client_errors.append(repr(exc))
            finally:
                connection.close()

        clients = [threading.Thread(target=client, args=(s,)) for s in range(args.sessions)]
        for thread in clients:
            thread.start()
        started = time.monotonic()
        takeovers: list[float] = []
        orphaned = kills = 0
        while kills < args.kills and any(thread.is_alive() for thread in clients):
            time.sleep(rng.uniform(0.5, 2.0))
            holders = query(watcher, "SELECT DISTINCT lease_owner FROM turns "
                            "WHERE state = 'running' AND lease_expires_at > now()")  # fmt: skip
            owned = {}
            for (owner,) in holders:
                group = instances.group_of(int(owner.split(":")[1])) if owner else None
                if group is not None:
                    owned[group] = owner
            if not owned:
                continue
            group = rng.choice(sorted(owned))
            freed_port = instances.kill(group)
            killed_at = time.monotonic()
            kills += 1
            owner = owned[group]
            held = [str(t) for (t,) in query(
                watcher, "SELECT id::text FROM turns WHERE state = 'running' AND lease_owner = %s",
                (owner,))]  # fmt: skip
            orphaned += len(held)
            _, _, taken = watch_takeover(watcher, owner, held, killed_at, 120.0)
            takeovers.extend(taken.values())
            instances.start(freed_port)
        for thread in clients:
            thread.join(timeout=600)
        elapsed = time.monotonic() - started
        states = dict(query(watcher, "SELECT state, count(*) FROM turns GROUP BY state"))
        finals = query(watcher, "SELECT t.id, (SELECT count(*) FROM messages m WHERE "
                       "m.turn_id = t.id AND m.role = 'assistant') FROM turns t")  # fmt: skip
        posted = per_session * args.sessions
        result = {
            "instances": args.instances,
            "sessions": args.sessions,
            "turns": posted,
            "client_errors": client_errors,
            "kills": kills,
            "turns_orphaned_by_kills": orphaned,
            "takeover_seconds": {
                "p50": round(percentile(takeovers, 0.5), 3),
                "p99": round(percentile(takeovers, 0.99), 3),
                "max": round(max(takeovers), 3),
            } if takeovers else None,
            "turns_not_taken_over": orphaned - len(takeovers),
            "turns_completed": int(states.get("completed", 0)),
            "turns_lost": posted - int(states.get("completed", 0)),
            "turns_duplicated": sum(1 for _, count in finals if count > 1),
            "seconds": round(elapsed, 1),
            "load_average_1m_at_end": round(os.getloadavg()[0], 1),
        }  # fmt: skip
        print(json.dumps(result, indent=2))
        bad = result["turns_lost"] or result["turns_duplicated"] or client_errors
        return 1 if bad else 0
    finally:
        instances.stop_all()
        emulator.stop()
        if gateway is not None:
            with contextlib.suppress(OSError):
                os.killpg(gateway.pid, signal.SIGTERM)
            try:
                gateway.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(gateway.pid, signal.SIGKILL)
        watcher.close()
        model.close()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
