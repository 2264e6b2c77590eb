"""Benchmark: turns per second and latency from POST message to the first stream event and to
turn completion, with a zero-latency OpenAI-compatible model server.

Starts its own durable PostgreSQL (fsync on), the gateway under functions-framework (gunicorn)
and a `talon worker`, then drives N concurrent clients, each on its own session.

    .venv/bin/python bench/turns.py --clients 1 --turns 200
    .venv/bin/python bench/turns.py --clients 16 --turns 2000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pubsub_stack import Emulator, broker_env, push_topology

from talon.client import Client, Event
from talon.config import DatabaseSettings, WorkerSettings
from talon.store.connect import connector_from_url
from talon.store.database import Database
from talon.store.local_postgres import LocalPostgres, free_port, wait_for_port
from talon.store.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]

TOKEN = "bench-admin-token"


def rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process is gone
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def commits(url_db: LocalPostgres) -> int:
    connection = url_db.connect("talon")
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = 'talon'")
        return int(cursor.fetchone()[0])
    finally:
        connection.close()


def next_xid(url_db: LocalPostgres) -> int:
    """The next transaction id: the difference over a run counts the transactions that wrote
    (read-only ones get no id), without assigning one itself."""
    connection = url_db.connect("talon")
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        return int(cursor.fetchone()[0])
    finally:
        connection.close()


def table_writes(url_db: LocalPostgres) -> dict[str, list[int]]:
    """Rows written so far per table: inserted, updated (of them in place, HOT), deleted."""
    connection = url_db.connect("talon")
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del "
            "FROM pg_stat_user_tables"
        )
        return {row[0]: [int(v) for v in row[1:]] for row in cursor.fetchall()}
    finally:
        connection.close()


def wal_position(url_db: LocalPostgres) -> tuple[int, int]:
    """The WAL's end (bytes) and how many times the WAL was flushed to disk so far."""
    connection = url_db.connect("talon")
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, wal_sync FROM pg_stat_wal"
        )
        written, synced = cursor.fetchone()
        return int(written), int(synced)
    finally:
        connection.close()


# A database in service: past sessions of the benchmark's agent, each with this many turns
# and, per turn, what a one-step turn leaves (2 messages, 12 events, 3 journaled steps).
PAST_TURNS_PER_SESSION = 100
_PREFILL_SQL = [
    "INSERT INTO sessions (uid, namespace, id, agent, last_event_id, last_message, last_turn) "
    "SELECT gen_random_uuid(), 'bench', 'past-' || g, 'bot', 12 * {per}, 2 * {per}, "
    "{per} FROM generate_series(1, {sessions}) g",
    "INSERT INTO turns (id, session_uid, seq, state, idempotency_key, input_seq, "
    "fencing_token, attempts, started_at, finished_at) "
    "SELECT gen_random_uuid(), s.uid, k, 'completed', md5(s.id || k), 2 * k - 1, 1, 1, now(), "
    "now() FROM sessions s, generate_series(1, {per}) k WHERE s.id LIKE 'past-%'",
    "INSERT INTO messages (session_uid, seq, role, content, turn_id) "
    "SELECT t.session_uid, 2 * t.seq - 1 + r, (ARRAY['user', 'assistant'])[r + 1], "
    "'a message of the past', t.id FROM turns t, generate_series(0, 1) r",
    "INSERT INTO session_events (session_uid, id, turn_id, type, data) "
    "SELECT t.session_uid, 12 * (t.seq - 1) + k, t.id, 'step.completed', "
    "jsonb_build_object('step', 'call-model') FROM turns t, generate_series(1, 12) k",
    "INSERT INTO turn_steps (turn_id, idx, name, kind, state, output, fencing_token, "
    "completed_at) SELECT t.id, k, 'call-model', 'model', 'completed', '{{}}', 1, now() "
    "FROM turns t, generate_series(0, 2) k",
]


def prefill(url_db: LocalPostgres, turns: int) -> None:
    """`turns` past turns (`PAST_TURNS_PER_SESSION` per session), then ANALYZE, as
    autovacuum keeps a database in service: the plans each connection caches are then made
    for tables of that size, not for the empty tables of a new database."""
    connection = url_db.connect("talon")
    try:
        cursor = connection.cursor()
        per = min(turns, PAST_TURNS_PER_SESSION)
        for sql in _PREFILL_SQL if turns else []:
            cursor.execute(sql.format(per=per, sessions=turns // max(per, 1)))
        connection.commit()
        connection.autocommit = True
        cursor.execute("ANALYZE")
    finally:
        connection.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def with_descendants(root: int) -> list[int]:
    """`root` and every process below it (gunicorn serves from child processes)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def postgres_pids(cluster: LocalPostgres) -> list[int]:
    """This benchmark's PostgreSQL: its postmaster and every process below it (not other
    clusters running on the machine, e.g. a test suite's)."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    return with_descendants(postmaster)


def postgres_roles(url_db: LocalPostgres) -> dict[int, str]:
    """What each PostgreSQL process does: background processes by type, the listening
    connections (their last statement was a LISTEN), and the other client connections."""
    connection = url_db.connect("talon")
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT pid, CASE WHEN backend_type <> 'client backend' THEN backend_type "
            "WHEN query LIKE 'LISTEN%%' THEN 'listening connections' "
            "ELSE 'other connections' END FROM pg_stat_activity"
        )
        return {int(pid): str(role) for pid, role in cursor.fetchall()}
    finally:
        connection.close()


def postgres_clients(url_db: LocalPostgres, owners: dict[str, list[int]]) -> dict[int, str]:
    """Which of `owners` (a name: its processes) each client connection serves, by the TCP
    port its client end holds; "other" for the rest (this script's own, unix sockets)."""
    by_port = {port: name for name, pids in owners.items() for port in _local_ports(pids)}
    connection = url_db.connect("talon")
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        return {int(pid): by_port.get(port or -1, "other") for pid, port in cursor.fetchall()}
    finally:
        connection.close()


def _local_ports(pids: list[int]) -> set[int]:
    """The local ports of the TCP sockets `pids` hold (from /proc: their socket inodes)."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # gone
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def client_loop(
    base: str,
    n: int,
    turns: int,
    progress: Any,
    stream: str = "per-turn",
    message_bytes: int = 0,
) -> list[tuple[float, float]]:
    """One client on its own session, through the SDK: post, read the stream to the turn's
    completion, again. `stream`: "per-turn" opens a stream for each turn from the POST's
    `streamFrom`; "session" keeps one stream open across turns, as a chat UI does; "post"
    posts each message for its turn's events (`send_and_stream`: one request a turn).
    Returns (POST to first event, POST to completion) per turn, in seconds."""
    own = Client(base, TOKEN, timeout=60)
    session = own.create_session("bench", "bot", f"c{n}")
    held = None
    if stream == "session":  # the events of the turns posted below
        # From the session's position now, not from whenever the (lazy) stream connects:
        # after the first POST, when a quick turn may already be over.
        held = own.stream("bench", "bot", f"c{n}", after=session.last_event_id,
                          max_seconds=3600)  # fmt: skip
    timings = []
    for i in range(turns):
        started = time.perf_counter()
        text = f"turn {i}"
        content = text.ljust(message_bytes, "x")
        if stream == "post":  # one request: the message, answered with its turn's events
            events = own.send_and_stream("bench", "bot", f"c{n}", content)
            first, done = _read_turn(events, None, started)
        else:
            accepted = own.send("bench", "bot", f"c{n}", content)
            events = held or own.stream("bench", "bot", f"c{n}", after=accepted.stream_from,
                                        until_turn_end=True)  # fmt: skip
            first, done = _read_turn(events, accepted.turn_id, started)
        if done is None:  # a stream that ends before its turn is a bug, not a fast turn
            raise RuntimeError(f"client {n}: the stream ended before turn {i} completed")
        timings.append((first or done, done))
        if held is None:
            # To its end, as the SDK's documented loop reads it: a stream with untilTurnEnd
            # ends by itself once the turn is over, and its connection goes back to the pool
            # for the next request; stopping at turn.completed would drop the connection
            # (the gateway's last bytes unread), and every turn would open a new one.
            for _ in events:
                pass
        if progress is not None:
            with progress.get_lock():
                progress.value += 1
    if held is not None:
        held.close()
    own.close()
    return timings


def _read_turn(
    events: Iterator[Event], turn_id: str | None, started: float
) -> tuple[float | None, float | None]:
    """Reads up to `turn_id`'s completion (None: the first event's turn); (first event,
    completion) seconds after `started`. An event sent twice, or out of order, fails the
    run: a stream's ids only grow."""
    first, last = None, 0
    for event in events:
        if event.id <= last:
            raise RuntimeError(f"event {event.id} came after event {last}")
        last = event.id
        turn_id = turn_id or event.turn_id
        if event.turn_id != turn_id:
            continue  # a held stream has no other turns' events left; this is a guard
        if first is None:
            first = time.perf_counter() - started
        if event.type == "turn.completed":
            return first, time.perf_counter() - started
    return first, None


def client_process(
    base: str,
    ids: list[int],
    turns: int,
    progress: Any,
    go: Any,
    results: Any,
    stream: str = "per-turn",
    message_bytes: int = 0,
) -> None:
    """Clients `ids` as threads; waits for `go` (sessions are created before it)."""
    import queue

    ready: queue.Queue[list[tuple[float, float]]] = queue.Queue()
    gate = threading.Event()

    failures: list[BaseException] = []

    def one(n: int) -> None:
        try:
            run_one(n)
        except BaseException as exc:
            failures.append(exc)
            raise

    def run_one(n: int) -> None:
        with Client(base, TOKEN) as own:
            own.create_session("bench", "bot", f"c{n}")
        gate.wait()
        ready.put(client_loop(base, n, turns, progress, stream, message_bytes))

    threads = [threading.Thread(target=one, args=(n,)) for n in ids]
    for thread in threads:
        thread.start()
    go.wait()
    cpu_started = time.process_time()
    gate.set()
    for thread in threads:
        thread.join()
    timings: list[tuple[float, float]] = []
    while not ready.empty():
        timings += ready.get()
    results.put((timings, time.process_time() - cpu_started, [repr(f) for f in failures]))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--turns", type=int, default=200, help="total turns across clients")
    parser.add_argument("--worker-concurrency", type=int, default=16)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument(
        "--stream", choices=["per-turn", "session", "post"], default="per-turn",
        help="per-turn: a stream per turn from the POST's streamFrom; session: one stream "
        "per client held across its turns (a chat UI); post: each message posted for its "
        "turn's events (one request a turn)",
    )  # fmt: skip
    parser.add_argument(
        "--model", choices=["server", "demo"], default="server",
        help="server: the openai client to a zero-latency HTTP model server; demo: in-process",
    )  # fmt: skip
    parser.add_argument(
        "--server", choices=["functions-framework", "talon"], default="functions-framework",
        help="the gateway's server: functions-framework's (Cloud Run functions) or talon.serve "
        "(talon dev: streams handed to its stream hub after their head)",
    )  # fmt: skip
    parser.add_argument(
        "--message-bytes", type=int, default=0, metavar="N",
        help="pad each posted message to N bytes: a history window of 41 turns carries them",
    )  # fmt: skip
    parser.add_argument(
        "--broker", choices=["postgres", "pubsub"], default="postgres",
        help="postgres: the local default, a `talon worker` claiming from PostgreSQL; pubsub: "
        "as deployed, the gateway publishes to the Pub/Sub emulator, which pushes to a "
        "dispatch function (functions-framework) that runs the turns",
    )  # fmt: skip
    parser.add_argument(
        "--prefill-turns", type=int, default=0, metavar="N",
        help="start from a database in service: N past turns (100 per session, with their "
        "messages, events and steps) and ANALYZE, before the first turn",
    )  # fmt: skip
    parser.add_argument(
        "--pool-size",
        type=_positive,
        default=None,
        help="database connections per process at most (the gateway's, the "
        "worker's); default: Talon's own (the gateway's 5, a worker's 2)",
    )
    parser.add_argument(
        "--stack", choices=["talon", "skeleton", "talon-gateway"], default="talon",
        help="talon: Talon's gateway and worker; skeleton: bench/skeleton.py's, the prescribed "
        "parts in Talon's process layout joined by the contract's statements (--stream post); "
        "talon-gateway: Talon's gateway with the skeleton's worker (which side holds a "
        "difference)",
    )  # fmt: skip
    parser.add_argument("--pg-log", help="copy the PostgreSQL log (every statement) here")
    parser.add_argument(
        "--pg-statements", type=int, default=0, metavar="N",
        help="report the N statements with the most PostgreSQL time (pg_stat_statements)",
    )  # fmt: skip
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main() -> int:
    print(json.dumps(run(parser().parse_args()), indent=2))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One benchmark run with `args` (as `parser()` makes them); the figures it prints. What
    it started is stopped whatever happens (a failed run left its servers running, holding
    the ports and the output of a pipe it was read through)."""
    with contextlib.ExitStack() as started:
        return _run(args, started)


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _run(args: argparse.Namespace, started: contextlib.ExitStack) -> dict[str, Any]:
    skeleton = args.stack == "skeleton"
    skeleton_worker = args.stack != "talon"
    if skeleton_worker and (args.stream != "post" or args.model != "server"):
        raise SystemExit(f"--stack {args.stack} runs with --stream post and the model server only")
    root = Path(tempfile.mkdtemp(prefix="talon-bench-"))
    root.chmod(0o755)
    # --pg-log: every statement in the server log, to see where the commits come from.
    options = {"log_min_duration_statement": "0"} if args.pg_log else {}
    if args.pg_statements:
        options["shared_preload_libraries"] = "pg_stat_statements"
        options["pg_stat_statements.track_planning"] = "on"
    pg = LocalPostgres(root / "pg", durable=True, options=options)
    pg.start()
    started.callback(pg.stop)
    pg.ensure_database("talon")
    if args.pg_statements:
        setup = pg.connect("talon")
        setup.autocommit = True
        setup.cursor().execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        setup.close()
    # Its own process, so the model server never waits for the clients' GIL.
    model_process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "model_server.py")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    started.callback(_stop, model_process)
    assert model_process.stdout is not None
    model_url = model_process.stdout.readline().strip()
    port = free_port()
    emulator = Emulator() if args.broker == "pubsub" else None
    if emulator:
        started.callback(emulator.stop)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TALON_")},
        **(broker_env(emulator) if emulator else {}),
        "TALON_CONTROL_PLANE_DATABASE_URL": pg.url("talon"),
        "TALON_ADMIN_TOKEN": TOKEN,
        "TALON_LOG_LEVEL": "WARNING",
        # Every client uses the one admin token: lift the per-token stream cap (meant for one
        # reader) so that each client can hold its stream, as distinct users would.
        "TALON_GATEWAY_MAX_OPEN_STREAMS": str(args.clients * 2 + 4),
        "TALON_GATEWAY_MAX_STREAMS_PER_TOKEN": str(args.clients * 2 + 4),
    }
    if args.pool_size is not None:  # the gateway's (and a dispatch function's) and the worker's
        env["TALON_CONTROL_PLANE_DATABASE_POOL_SIZE"] = str(args.pool_size)
        env["TALON_WORKER_POOL_SIZE"] = str(args.pool_size)
    if skeleton_worker:
        env |= {"SKELETON_MODEL_URL": model_url, "SKELETON_POOL_SIZE": str(args.pool_size or 2)}
    if skeleton:  # its schema is Talon's, migrated here (Talon's gateway migrates at start)
        migrate(Database(connector_from_url(pg.url("talon"), 10), 1))
    if emulator:
        emulator.wait()
        dispatch_port = free_port()
        push_topology(f"http://127.0.0.1:{dispatch_port}/")
    server = {"functions-framework": "functions_framework", "talon": "talon.serve"}[args.server]
    source = ROOT / ("bench/skeleton.py" if skeleton else "functions/gateway/main.py")
    gateway = subprocess.Popen(
        [sys.executable, "-m", server, "--target", "gateway", "--source", str(source),
         "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "THREADS": str(max(8, args.clients * 3))}, cwd=ROOT,
    )  # fmt: skip
    started.callback(_stop, gateway)
    wait_for_port("127.0.0.1", port)
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    for _ in range(100):
        try:
            if http.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    profile = (
        {"name": "zero", "model": {"provider": "openai", "name": "zero-latency",
                                   "baseUrl": model_url}}
        if args.model == "server"
        else {"name": "zero", "model": {"provider": "demo", "name": "demo"}}
    )  # fmt: skip
    template = {
        "apiVersion": "talon.dev/v1alpha1", "kind": "AgentTemplate",
        "metadata": {"name": "bench", "namespace": "bench"},
        "definition": {"modelPolicy": {"profiles": [profile]}, "systemPrompt": "Answer."},
    }  # fmt: skip
    items = [
        {"apiVersion": "talon.dev/v1alpha1", "kind": "Namespace", "metadata": {"name": "bench"}},
        template,
        {"apiVersion": "talon.dev/v1alpha1", "kind": "Agent",
         "metadata": {"name": "bot", "namespace": "bench"}, "spec": {"templateRef": "bench"}},
    ]  # fmt: skip
    if skeleton:  # the agent as Talon resolves it, read by the claim
        setup = pg.connect("talon")
        setup.cursor().execute(
            "INSERT INTO resources (kind, namespace, name, uid, resource_version, body, status) "
            "VALUES ('Agent', 'bench', 'bot', gen_random_uuid(), 1, '{}', "
            '\'{"phase": "Resolved"}\')'
        )
        setup.commit()
        setup.close()
    else:
        with Client(base, TOKEN, timeout=60) as sdk:
            sdk.apply(items)
    if args.prefill_turns:
        prefill(pg, args.prefill_turns)
    if emulator:  # a dispatch function instance, `--worker-concurrency` requests at a time
        source = ROOT / ("bench/skeleton.py" if skeleton_worker else "functions/dispatch/main.py")
        worker = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", "dispatch",
             "--source", str(source),
             "--host", "127.0.0.1", "--port", str(dispatch_port)],
            env={**env, "THREADS": str(args.worker_concurrency)}, cwd=ROOT,
        )  # fmt: skip
        started.callback(_stop, worker)
        wait_for_port("127.0.0.1", dispatch_port)
    else:
        command = (["bench/skeleton.py", "worker"] if skeleton_worker
                   else ["-m", "talon.cli.main", "worker", "--concurrency"])  # fmt: skip
        worker = subprocess.Popen(
            [sys.executable, *command, str(args.worker_concurrency)], env=env, cwd=ROOT
        )
        started.callback(_stop, worker)
    time.sleep(2)

    # Warm up (connections, caches), then measure.
    client_loop(base, -1, 5, None, "post" if skeleton_worker else "per-turn")
    # Clients run in several processes (threads within each), so the benchmark's own GIL
    # does not become the bottleneck it measures.
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    progress = context.Value("i", 0)
    groups = [list(range(args.clients))[k::args.client_processes]
              for k in range(min(args.client_processes, args.clients))]  # fmt: skip
    clients = [context.Process(target=client_process,
                               args=(base, ids, args.turns // args.clients, progress, go,
                                     results, args.stream, args.message_bytes))
               for ids in groups]  # fmt: skip
    for process in clients:
        process.start()

    # Backends report their commit counts when idle for 10 s or when they exit: let the
    # warm-up's be reported now, and count the run's after the processes stop.
    time.sleep(11)
    commits_before = commits(pg)
    xid_before = next_xid(pg)
    wal_before = wal_position(pg)
    tables_before = table_writes(pg)
    rss_before = sum(rss_kib(p) for p in with_descendants(worker.pid))
    roles = {"gateway": with_descendants(gateway.pid), "worker": with_descendants(worker.pid),
             "model server": [model_process.pid]}  # fmt: skip
    if emulator:
        roles["pubsub emulator"] = with_descendants(emulator.process.pid)
    cpu_before = {role: cpu_seconds(pids) for role, pids in roles.items()}
    cpu_before["postgres"] = cpu_seconds(postgres_pids(pg))
    pg_cpu_before = {pid: cpu_seconds([pid]) for pid in postgres_pids(pg)}
    if args.pg_statements:
        reset = pg.connect("talon")
        reset.cursor().execute("SELECT pg_stat_statements_reset()")
        reset.commit()
        reset.close()
    started = time.perf_counter()
    # RSS of the worker and the gateway (with its gunicorn workers) at every tenth of the run.
    samples: list[dict[str, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        step = max(1, args.turns // 10)
        while not sampling.wait(0.5):
            done = progress.value
            if done >= step * (len(samples) + 1) or (not samples and done == 0):
                samples.append({"turns": done, "worker_kib": sum(rss_kib(p) for p in
                                                                 with_descendants(worker.pid)),
                                "gateway_kib": sum(rss_kib(p) for p in
                                                   with_descendants(gateway.pid))})  # fmt: skip

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    go.set()
    first_event: list[float] = []
    completed: list[float] = []
    clients_cpu = 0.0
    for _ in clients:
        timings, cpu, failures = results.get()
        if failures:
            raise SystemExit(f"benchmark clients failed: {failures}")
        clients_cpu += cpu
        for first, done in timings:
            first_event.append(first)
            completed.append(done)
    elapsed = time.perf_counter() - started
    for process in clients:
        process.join()
    turns = len(completed)
    rss_after = sum(rss_kib(p) for p in with_descendants(worker.pid))
    sampling.set()
    cpu_after = {role: cpu_seconds(pids) for role, pids in roles.items()}
    cpu_after["postgres"] = cpu_seconds(postgres_pids(pg))
    # PostgreSQL's CPU by process role (processes started during the run count from zero;
    # the postmaster and anything gone before the end are "other").
    roles_now = postgres_roles(pg)
    served = postgres_clients(pg, {"gateway": roles["gateway"], "worker": roles["worker"]})
    pg_cpu: dict[str, float] = {}
    pg_cpu_by_client: dict[str, float] = {}  # the client connections' by whom they serve
    for pid in postgres_pids(pg):
        role = roles_now.get(pid, "other")
        spent = cpu_seconds([pid]) - pg_cpu_before.get(pid, 0.0)
        pg_cpu[role] = pg_cpu.get(role, 0.0) + spent
        if pid in served:
            what = "listening" if role == "listening connections" else "the rest"
            client = f"{served[pid]}: {what}"
            pg_cpu_by_client[client] = pg_cpu_by_client.get(client, 0.0) + spent
    http.close()
    for process in (worker, gateway):
        process.terminate()
        process.wait(timeout=30)
    time.sleep(1)  # the exiting backends' statistics
    # Minus our own queries: commits, next_xid, the WAL and table counts before the run,
    # postgres_roles after it.
    commits_per_turn = (commits(pg) - commits_before - 5) / turns
    wal_after = wal_position(pg)
    wal_per_turn = (wal_after[0] - wal_before[0]) / turns
    wal_syncs_per_turn = (wal_after[1] - wal_before[1]) / turns
    tables_after = table_writes(pg)
    rows_per_turn = {
        table: [
            round((n - m) / turns, 2)
            for n, m in zip(after, tables_before.get(table, [0] * 4), strict=True)
        ]
        for table, after in sorted(tables_after.items())
        if after != tables_before.get(table)
    }
    writes_per_turn = (next_xid(pg) - xid_before) / turns
    cpu_ms_per_turn = {
        role: round((cpu_after[role] - cpu_before[role]) * 1000 / turns, 2) for role in cpu_after
    }
    cpu_ms_per_turn["bench clients"] = round(clients_cpu * 1000 / turns, 2)
    pg_cpu_ms_per_turn = {role: round(spent * 1000 / turns, 2)
                          for role, spent in sorted(pg_cpu.items())}  # fmt: skip
    pg_cpu_ms_per_turn_by_client = {
        name: round(spent * 1000 / turns, 2) for name, spent in sorted(pg_cpu_by_client.items())
    }

    result = {
        "stack": args.stack,
        "clients": args.clients,
        "model": args.model,
        "stream": args.stream,
        "broker": args.broker,
        "pool_size": args.pool_size or (2 if skeleton else None) or {
            "gateway": DatabaseSettings.model_fields["pool_size"].default,
            "worker": WorkerSettings.model_fields["pool_size"].default,
        },
        "message_bytes": args.message_bytes,
        "turns": turns,
        "turns_per_second": round(turns / elapsed, 1),
        "first_event_ms": {"p50": round(percentile(first_event, 0.5) * 1000, 1),
                           "p99": round(percentile(first_event, 0.99) * 1000, 1)},
        "turn_complete_ms": {"p50": round(percentile(completed, 0.5) * 1000, 1),
                             "p99": round(percentile(completed, 0.99) * 1000, 1),
                             "mean": round(statistics.mean(completed) * 1000, 1),
                             "max": round(max(completed) * 1000, 1)},
        "seconds": round(elapsed, 2),
        # Every transaction PostgreSQL counts (pg_stat_database.xact_commit), read-only ones
        # and those it runs itself to hand notifications to listening connections included.
        "commits_per_turn_all_processes": round(commits_per_turn, 1),
        "write_transactions_per_turn": round(writes_per_turn, 1),
        # The WAL a turn writes (the bytes each commit flushes), and its rows by table:
        # inserted, updated (of them HOT, with no index entry), deleted.
        "wal_bytes_per_turn": round(wal_per_turn),
        # The flushes behind the durable commits (fewer than the commits when they group).
        "wal_syncs_per_turn": round(wal_syncs_per_turn, 2),
        "rows_per_turn_ins_upd_hot_del": rows_per_turn,
        "worker_rss_kib": {"before": rss_before, "after": rss_after},
        "rss_samples": samples,
        # Where the two cores went: CPU milliseconds per turn by process.
        "cpu_ms_per_turn": cpu_ms_per_turn,
        "postgres_cpu_ms_per_turn_by_process": pg_cpu_ms_per_turn,
        # The client connections' share by the process they serve (the gateway; the worker, or
        # deployed the dispatch function), its listening connection apart from the rest.
        "postgres_cpu_ms_per_turn_by_client": pg_cpu_ms_per_turn_by_client,
    }  # fmt: skip
    # Inside the database: a turn's wait from its commit to its claim, and its run.
    connection = pg.connect("talon")
    cursor = connection.cursor()
    cursor.execute(
        "SELECT round((percentile_cont(0.5) WITHIN GROUP (ORDER BY q) * 1000)::numeric, 1), "
        "round((percentile_cont(0.99) WITHIN GROUP (ORDER BY q) * 1000)::numeric, 1), "
        "round((percentile_cont(0.5) WITHIN GROUP (ORDER BY r) * 1000)::numeric, 1), "
        "round((percentile_cont(0.99) WITHIN GROUP (ORDER BY r) * 1000)::numeric, 1) FROM "
        "(SELECT EXTRACT(EPOCH FROM started_at - created_at) AS q, "
        "EXTRACT(EPOCH FROM finished_at - started_at) AS r FROM turns) t"
    )
    q50, q99, r50, r99 = (float(v) for v in cursor.fetchone())
    result["queued_ms_p50_p99"], result["running_ms_p50_p99"] = [q50, q99], [r50, r99]
    connection.close()
    if os.environ.get("BENCH_SLOWEST"):  # where the slowest turns spent their time
        connection = pg.connect("talon")
        cursor = connection.cursor()
        cursor.execute(
            "SELECT (EXTRACT(EPOCH FROM started_at - created_at) * 1000)::int, "
            "(EXTRACT(EPOCH FROM finished_at - started_at) * 1000)::int, attempts FROM turns "
            "ORDER BY finished_at - created_at DESC LIMIT 5"
        )
        result["slowest_queued_running_ms"] = cursor.fetchall()
        connection.close()
    if args.pg_statements:
        connection = pg.connect("talon")
        cursor = connection.cursor()
        cursor.execute(
            "SELECT round((total_exec_time / %s * 1000)::numeric, 1)::float, "
            "round((total_plan_time / %s * 1000)::numeric, 1)::float, "
            "round((calls::float / %s)::numeric, 2)::float, "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 160) "
            "FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT %s",
            (turns, turns, turns, args.pg_statements),
        )
        result["pg_statements_exec_us_plan_us_calls_per_turn"] = cursor.fetchall()
        connection.close()
    model_process.terminate()
    model_process.wait(timeout=10)
    if emulator:
        emulator.stop()
    pg.stop()
    if args.pg_log:
        shutil.copy(root / "pg" / "server.log", args.pg_log)
    shutil.rmtree(root, ignore_errors=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
