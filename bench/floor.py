"""Benchmark: the floor under `bench/turns.py` — what its clients, functions-framework and the
openai client to the zero-latency model server cost per turn with no Talon code and no
database. Two cores divided by this CPU per turn bound the turns per second any gateway and
worker built on these parts can reach on this machine.

    .venv/bin/python bench/floor.py --clients 16 --turns 4000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from turns import client_process, cpu_seconds, with_descendants

from talon.runtime.providers.base import ModelRequest
from talon.runtime.providers.openai_chat import OpenAIChatModel
from talon.store.local_postgres import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def http_floor(clients: int, turns: int, processes: int, stream: str) -> dict[str, float]:
    """POST + stream per turn (`stream` "post": one POST answered with the events), as the
    turns benchmark's clients do, against a no-op app."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", "floor",
         "--source", str(ROOT / "bench" / "floor_app.py"),
         "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "THREADS": str(max(8, clients * 3))},
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port)
        time.sleep(1)
        context = multiprocessing.get_context("spawn")
        go, results = context.Event(), context.Queue()
        progress = context.Value("i", 0)
        groups = [list(range(clients))[k::processes] for k in range(min(processes, clients))]
        workers = [context.Process(target=client_process,
                                   args=(f"http://127.0.0.1:{port}", ids, turns // clients,
                                         progress, go, results, stream))
                   for ids in groups]  # fmt: skip
        for process in workers:
            process.start()
        time.sleep(3)  # the clients' imports and session "creation" (a POST) are done
        pids = with_descendants(server.pid)
        before = cpu_seconds(pids)
        started = time.perf_counter()
        go.set()
        clients_cpu, done = 0.0, 0
        for _ in workers:
            timings, cpu, failures = results.get()
            if failures:
                raise SystemExit(f"clients failed: {failures}")
            clients_cpu += cpu
            done += len(timings)
        elapsed = time.perf_counter() - started
        server_cpu = cpu_seconds(pids) - before
        for process in workers:
            process.join()
        return {
            "turns_per_second": round(done / elapsed, 1),
            "bench clients": round(clients_cpu * 1000 / done, 2),
            "functions-framework (no-op gateway)": round(server_cpu * 1000 / done, 2),
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


def model_floor(threads: int, calls: int, history: int) -> dict[str, float]:
    """Streamed chat completions through Talon's openai adapter, `threads` at a time, each
    with `history` earlier messages (the turns benchmark sends up to 80)."""
    model_server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "model_server.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert model_server.stdout is not None
        url = model_server.stdout.readline().strip()
        model = OpenAIChatModel(profile="zero", model="zero-latency", api_key="none",
                                base_url=url, temperature=None, max_tokens=None)  # fmt: skip
        messages = [{"role": "system", "content": "Answer."}]
        for i in range(history // 2):
            messages += [{"role": "user", "content": f"turn {i}"},
                         {"role": "assistant", "content": "ok"}]  # fmt: skip
        messages.append({"role": "user", "content": "turn"})

        def call(_: int) -> None:
            model.complete(ModelRequest(messages, [], 30.0, lambda text: None))

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(call, range(threads * 2)))  # connections and imports warm
            own_before = time.process_time()
            server_before = cpu_seconds([model_server.pid])
            started = time.perf_counter()
            list(pool.map(call, range(calls)))
            elapsed = time.perf_counter() - started
            own = time.process_time() - own_before
            server = cpu_seconds([model_server.pid]) - server_before
        return {
            "calls_per_second": round(calls / elapsed, 1),
            "openai client (Talon's adapter)": round(own * 1000 / calls, 2),
            "model server": round(server * 1000 / calls, 2),
        }
    finally:
        model_server.terminate()
        model_server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4000)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--history", type=int, default=80, help="earlier messages per call")
    parser.add_argument("--stream", choices=["per-turn", "post"], default="per-turn")
    args = parser.parse_args()
    figures = floor(args.clients, args.turns, args.client_processes, args.history, args.stream)
    print(json.dumps(figures, indent=2))
    return 0


def floor(
    clients: int, turns: int, processes: int, history: int, stream: str = "per-turn"
) -> dict[str, Any]:
    """The floor's figures: CPU per turn of each part and the turns/s two cores allow."""
    http = http_floor(clients, turns, processes, stream)
    model = model_floor(clients, turns, history)
    cpu = {k: v for part in (http, model) for k, v in part.items() if not k.endswith("second")}
    total = sum(cpu.values())
    return {
        "http_only_turns_per_second": http["turns_per_second"],
        "model_calls_per_second": model["calls_per_second"],
        "cpu_ms_per_turn": cpu,
        "floor_cpu_ms_per_turn": round(total, 2),
        # Both cores busy with nothing else: the most turns per second this floor allows.
        "ceiling_turns_per_second": round(2000 / total, 1),
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
