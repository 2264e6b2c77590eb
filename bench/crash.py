"""Benchmark: how fast a SIGKILLed worker's turns are taken over, and that none is lost,
doubled or has a tool call run twice.

Starts its own durable PostgreSQL, the gateway under functions-framework, an OpenAI-compatible
model server whose every answer takes `--model-seconds`, and `--workers` pull-worker
processes (`tests/tool_worker.py`: the worker `talon worker` runs, every timing at its
default — 30 s lease, 30.5 s visibility, 0.5 s takeover poll — plus a tool that records each
call it runs). Every turn asks the model, runs one tool call (`--tool-seconds`), asks again
and answers. `--sessions` chat-like clients, one per session, post a message and wait for
its turn to end, `--turns` turns between them; while they run, the benchmark SIGKILLs
`--kills` times a worker that holds a running turn and watches the dead worker's turns:
takeover time is from the kill until another worker holds the turn (its lease owner
changed), polled every 10 ms; then a replacement worker is started. At the end every turn
must be completed with one final answer, and no tool call may have run twice.

`--broker pubsub` runs the same on Pub/Sub pull mode: a gcloud Pub/Sub emulator (started and
stopped here), pull subscriptions with the default 10 s ack deadline, the gateway publishing
to them and the workers pulling from them. A dead worker's messages come back only after
their ack deadline; its turns are taken over by the survivors' orphan sweep.

    .venv/bin/python bench/crash.py --kills 20
    .venv/bin/python bench/crash.py --kills 20 --broker pubsub
"""

from __future__ import annotations

import argparse
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

from talon.store.liveness import APPLICATION_NAME, owner_key_sql
from talon.store.local_postgres import LocalPostgres, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from model_server import ModelServer  # noqa: E402  (a test double, shared with the tests)

TOKEN = "bench-admin-token"
PROJECT = "talon-bench"
SESSIONS = "/v1/ns/bench/agents/bot/sessions"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class PerTurnScript:
    """The model server's script, by request: a tool call first, the answer once the call's
    result is in (a fixed alternation would drift out of step with the turns as kills cut
    requests off)."""

    def __init__(self, server: ModelServer, seconds: float) -> None:
        self.server = server
        self.seconds = seconds

    def __bool__(self) -> bool:
        return True

    def popleft(self) -> dict[str, Any]:
        request = self.server.requests[-1]  # the one being answered (under the server's lock)
        if request["messages"][-1]["role"] == "tool":
            return {"hang": self.seconds, "content": "done"}
        call = {"name": "get_renewals", "arguments": {"days": 7}, "nonce": True}
        return {"hang": self.seconds, "tool_calls": [call]}


class Workers:
    def __init__(self, database_url: str, calls: Path, tool_seconds: float) -> None:
        self.argv = [sys.executable, str(ROOT / "tests" / "tool_worker.py"), database_url,
                     str(calls), "30", str(tool_seconds)]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
        self.env["PYTHONPATH"] = str(ROOT / "tests")
        self.running: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> int:
        process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, start_new_session=True,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        self.running[process.pid] = process
        return process.pid

    def kill(self, pid: int) -> None:
        os.killpg(pid, signal.SIGKILL)
        self.running.pop(pid).wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.running.values():
            with _quiet():
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.running.clear()


def start_pubsub(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the Pub/Sub emulator, create the pull topology (default ack deadline) and put
    the pull-mode settings into `env` (the gateway's and the workers')."""
    from talon.broker.pubsub_topology import create_pull_topology
    from talon.config import load_settings

    if shutil.which("gcloud") is None:
        raise SystemExit("gcloud (with the Pub/Sub emulator) is needed")
    port = free_port()
    emulator = subprocess.Popen(
        ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
         f"--project={PROJECT}", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    prefix = "TALON_CONTROL_PLANE_MESSAGE_BROKER_"
    env.update({
        "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}",
        f"{prefix}DRIVER": "gcp_pubsub", f"{prefix}PROJECT": PROJECT,
        f"{prefix}DISPATCH_TOPIC": "bench-dispatch", f"{prefix}LIFECYCLE_TOPIC": "bench-lifecycle",
        f"{prefix}DEAD_LETTER_TOPIC": "bench-dead",
        f"{prefix}DISPATCH_SUBSCRIPTION": "bench-dispatch-pull",
        f"{prefix}LIFECYCLE_SUBSCRIPTION": "bench-lifecycle-pull",
        f"{prefix}DEAD_LETTER_SUBSCRIPTION": "bench-dead-pull",
    })  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        os.environ["PUBSUB_EMULATOR_HOST"] = env["PUBSUB_EMULATOR_HOST"]
        create_pull_topology(load_settings(environ=env).control_plane.message_broker)
    except BaseException:
        os.killpg(emulator.pid, signal.SIGTERM)
        raise
    return emulator


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def query(connection: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cursor = connection.cursor()
    cursor.execute(sql, params)
    return [tuple(row) for row in cursor.fetchall()]


def live_locks(connection: Any) -> int:
    return int(query(connection, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a "
                     "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                     "AND a.application_name = %s", (APPLICATION_NAME,))[0][0])  # fmt: skip


def watch_takeover(
    connection: Any, owner: str, turns: list[str], killed_at: float, limit: float
) -> tuple[float | None, float | None, dict[str, float]]:
    """Poll until every turn in `turns` is held by another owner (or finished); return when
    the dead owner's lock was gone, when none of its outbox rows was left (all claimed
    again) and when each turn was taken over, in seconds after the kill (a turn still held
    after `limit` seconds is left out)."""
    lock_gone: float | None = None
    rows_gone: float | None = None
    taken: dict[str, float] = {}
    while time.monotonic() - killed_at < limit and (
        lock_gone is None or rows_gone is None or len(taken) < len(turns)
    ):
        rows = query(
            connection,
            "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = "
            f"{owner_key_sql('%s')}), "
            "array(SELECT id::text FROM turns WHERE id = ANY(%s::uuid[]) "
            "AND (state <> 'running' OR lease_owner IS DISTINCT FROM %s)), "
            "(SELECT count(*) FROM outbox WHERE claimed_by = %s)",
            (owner, turns, owner, owner),
        )
        now = time.monotonic() - killed_at
        held, moved, rows_held = rows[0]
        if lock_gone is None and not held:
            lock_gone = now
        if rows_gone is None and not rows_held:
            rows_gone = now
        for turn in moved or []:
            taken.setdefault(turn, now)
        time.sleep(0.01)
    return lock_gone, rows_gone, taken


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=300, help="total, across the sessions")
    parser.add_argument("--model-seconds", type=float, default=0.3)
    parser.add_argument("--tool-seconds", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--takeover-poll", type=float, default=0.5,
                        help="worker.takeoverPollSeconds of the workers")  # fmt: skip
    parser.add_argument("--broker", choices=("postgres", "pubsub"), default="postgres")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up what was started

    root = Path(tempfile.mkdtemp(prefix="talon-bench-crash-"))
    root.chmod(0o755)
    pg = LocalPostgres(root / "pg", durable=True)
    pg.start()
    pg.ensure_database("talon")
    model = ModelServer()
    model.script = PerTurnScript(model, args.model_seconds)  # type: ignore[assignment]
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TALON_")},
        "TALON_CONTROL_PLANE_DATABASE_URL": pg.url("talon"),
        "TALON_ADMIN_TOKEN": TOKEN,
        "TALON_LOG_LEVEL": "WARNING",
    }
    emulator = start_pubsub(env) if args.broker == "pubsub" else None
    gateway = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", "gateway",
         "--source", str(ROOT / "functions" / "gateway" / "main.py"),
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    calls = root / "calls.jsonl"
    workers = Workers(pg.url("talon"), calls, args.tool_seconds)
    workers.env["TALON_WORKER_TAKEOVER_POLL_SECONDS"] = str(args.takeover_poll)
    workers.env.update({k: v for k, v in env.items() if "BROKER" in k or "PUBSUB" in k})
    watcher = pg.connect("talon")
    watcher.autocommit = True
    try:
        wait_for_port("127.0.0.1", port)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                            headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        for _ in range(100):
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
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
        for _ in range(args.workers):
            workers.start()
        deadline = time.monotonic() + 60
        while live_locks(watcher) < args.workers:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        for s in range(args.sessions):
            http.post(SESSIONS, json={"id": f"s{s}"}).raise_for_status()
        # Chat-like clients, one per session: post, wait for the turn to end, post again.
        per_session = args.turns // args.sessions
        posted = [0]
        count_lock = threading.Lock()
        client_errors: list[str] = []

        def client(s: int) -> None:
            own = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                               headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            connection = pg.connect("talon")
            connection.autocommit = True
            try:
                for i in range(per_session):
                    reply = own.post(f"{SESSIONS}/s{s}/message", json={"content": f"turn {i}"})
                    reply.raise_for_status()
                    with count_lock:
                        posted[0] += 1
                    turn = reply.json()["turnId"]
                    posted_at = time.monotonic()
                    while query(connection, "SELECT 1 FROM turns WHERE id = %s "
                                "AND state IN ('queued', 'running')", (turn,)):  # fmt: skip
                        if time.monotonic() - posted_at > 120:  # counted as lost, not waited on
                            raise TimeoutError(f"turn {turn} of s{s} still open after 120 s")
                        time.sleep(0.05)
            except Exception as exc:  # reported, and the run fails
                client_errors.append(repr(exc))
            finally:
                own.close()
                connection.close()

        clients = [threading.Thread(target=client, args=(s,)) for s in range(args.sessions)]
        for thread in clients:
            thread.start()
        started = time.monotonic()

        takeovers: list[float] = []
        lock_releases: list[float] = []
        rows_reclaimed: list[float] = []
        orphaned = 0
        kills = 0
        while kills < args.kills and time.monotonic() - started < 600:
            if not any(thread.is_alive() for thread in clients):
                break
            time.sleep(rng.uniform(0.5, 2.0))  # lands anywhere in a step
            holders = query(watcher, "SELECT DISTINCT lease_owner FROM turns "
                            "WHERE state = 'running' AND lease_expires_at > now()")  # fmt: skip
            # The owner id is host:pid:suffix; kill only a worker that holds a turn.
            owned = {int(o.split(":")[1]): o for (o,) in holders if o}
            victims = [pid for pid in owned if pid in workers.running]
            if not victims:
                if not any(thread.is_alive() for thread in clients):
                    break  # every turn is done: too few turns for the kills asked
                continue
            pid = rng.choice(victims)
            workers.kill(pid)
            killed_at = time.monotonic()
            kills += 1
            owner = owned[pid]
            held = [str(t) for (t,) in query(
                watcher, "SELECT id::text FROM turns WHERE state = 'running' AND lease_owner = %s",
                (owner,))]  # fmt: skip
            orphaned += len(held)
            lock_gone, rows_gone, taken = watch_takeover(watcher, owner, held, killed_at, 60.0)
            if rows_gone is not None:
                rows_reclaimed.append(rows_gone)
            # The replacement starts once the survivors took over: on two cores a Python
            # process starting up would slow them down, which a separate machine would not.
            workers.start()
            if lock_gone is not None:
                lock_releases.append(lock_gone)
            takeovers.extend(taken.values())
            if len(taken) < len(held):
                print(f"kill {kills}: {len(held) - len(taken)} turn(s) not taken over in 60 s",
                      file=sys.stderr)  # fmt: skip
        for thread in clients:  # every client's turns done
            thread.join(timeout=600)
        elapsed = time.monotonic() - started
        states = dict(query(watcher, "SELECT state, count(*) FROM turns GROUP BY state"))
        # One final answer (an assistant message without tool calls) per completed turn.
        finals = query(
            watcher,
            "SELECT t.id, (SELECT count(*) FROM messages m WHERE m.turn_id = t.id AND "
            "m.role = 'assistant' AND m.tool_calls IS NULL) FROM turns t",
        )
        nonces = [json.loads(line)["nonce"] for line in calls.read_text().splitlines()]
        failures = query(watcher, "SELECT attempts, error::text FROM turns "
                         "WHERE state = 'failed'")  # fmt: skip
        attempts = dict(query(watcher, "SELECT attempts, count(*) FROM turns GROUP BY 1"))
        resumed = query(watcher, "SELECT count(*) FROM turns WHERE attempts > 1")[0][0]
        interrupted = query(watcher, "SELECT count(*) FROM messages WHERE role = 'tool' "
                            "AND content LIKE 'error: the worker running%%'")[0][0]  # fmt: skip
        result = {
            "broker": args.broker,
            "workers": args.workers,
            "sessions": args.sessions,
            "turns": posted[0],
            "client_errors": client_errors,
            "kills": kills,
            "turns_orphaned_by_kills": orphaned,
            "turns_resumed": int(resumed),
            "tool_calls_interrupted": int(interrupted),
            "takeover_seconds": {
                "p50": round(percentile(takeovers, 0.5), 3),
                "p99": round(percentile(takeovers, 0.99), 3),
                "max": round(max(takeovers), 3),
            } if takeovers else None,
            "lock_released_after_kill_ms": {
                "p50": round(percentile(lock_releases, 0.5) * 1000, 1),
                "max": round(max(lock_releases) * 1000, 1),
            } if lock_releases else None,
            # When the dead worker's deliveries were all claimed again by the survivors.
            "deliveries_reclaimed_seconds": {
                "p50": round(percentile(rows_reclaimed, 0.5), 3),
                "p99": round(percentile(rows_reclaimed, 0.99), 3),
            } if rows_reclaimed and args.broker == "postgres" else None,
            "turns_not_taken_over": orphaned - len(takeovers),
            "turns_completed": int(states.get("completed", 0)),
            "turns_lost": posted[0] - int(states.get("completed", 0)),
            "turns_failed": int(states.get("failed", 0)),
            "failures": [list(f) for f in failures],
            "turns_by_attempts": {str(k): int(v) for k, v in sorted(attempts.items())},
            "turns_duplicated": sum(1 for _, count in finals if count > 1),
            "turns_without_answer": sum(1 for _, count in finals if count == 0),
            "tool_calls_run": len(nonces),
            "tool_calls_repeated": len(nonces) - len(set(nonces)),
            "seconds": round(elapsed, 1),
            "lease_seconds": 30,
            "takeover_poll_seconds": args.takeover_poll,
            "load_average_1m_at_end": round(os.getloadavg()[0], 1),
        }  # fmt: skip
        print(json.dumps(result, indent=2))
        bad = (result["turns_lost"] or result["turns_duplicated"] or client_errors
               or result["tool_calls_repeated"] or result["turns_not_taken_over"])  # fmt: skip
        return 1 if bad else 0
    finally:
        workers.stop_all()
        with _quiet():
            os.killpg(gateway.pid, signal.SIGTERM)
        gateway.wait(timeout=30)
        if emulator is not None:
            with contextlib.suppress(OSError):
                os.killpg(emulator.pid, signal.SIGTERM)
            emulator.wait(timeout=30)
        watcher.close()
        model.close()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
