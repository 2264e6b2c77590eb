"""`talon dev`: PostgreSQL in a folder plus the gateway, in one command, stopped cleanly."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import httpx

import talon
from talon.cli.apply import apply_documents, summary_lines
from talon.cli.client import CliError, error_line
from talon.cli.dev_examples import EXAMPLE_SERVERS, example_url, pointed, repoint
from talon.cli.dev_grpc import ensure_grpc_port_free, grpc_command, local_host
from talon.cli.dev_pubsub import PubSubEmulator
from talon.cli.manifest_files import read_documents
from talon.client import Client, TalonError
from talon.services import ADMIN_TOKEN_ENV
from talon.store.local_postgres import LocalPostgres, free_port, wait_for_port

DATABASE = "talon"
APPLIED_MARKER = "manifests-applied"
# The example manifests' MCP servers' secrets (the servers: cli/dev_examples.py).
EXAMPLE_SECRETS = {
    "STRIPE_READONLY_AUTHORIZATION": "Bearer example-stripe-readonly",
    "HUBSPOT_READONLY_AUTHORIZATION": "Bearer example-hubspot-readonly",
}


STOP_GRACE_SECONDS = 2.0
# Every open SSE stream holds a gunicorn thread (THREADS defaults to cores x 4).
GATEWAY_ENV = {"THREADS": "64"}


class _Stop(Exception):
    pass


def gateway_command(host: str, port: int) -> list[str]:
    """The gateway function under Talon's server (functions-framework's app and gunicorn
    application, Talon's worker: see talon/serve), which reads request heads without
    holding a thread and on a deadline."""
    source = functions_dir() / "gateway" / "main.py"
    return [
        sys.executable, "-m", "talon.serve", "--target", "gateway",
        "--source", str(source), "--host", host, "--port", str(port),
    ]  # fmt: skip


@dataclass
class DevOptions:
    host: str
    port: int
    data_dir: Path
    manifests: Path | None
    config: Path | None
    example_tools: bool = True
    broker: str = "postgres"  # or "pubsub": the Pub/Sub emulator and the pull worker
    grpc: tuple[str, int] | None = None  # (host, port) of the gRPC server; None: none


def functions_dir() -> Path:
    """The Cloud Run function shims: from the working tree, else beside the installed package."""
    for candidate in (
        Path.cwd() / "functions",
        Path(talon.__file__).resolve().parents[2] / "functions",
    ):
        if (candidate / "gateway" / "main.py").is_file():
            return candidate
    raise CliError("cannot find functions/gateway/main.py; run `talon dev` from the Talon checkout")


def _admin_token(data_dir: Path) -> str:
    from_env = os.environ.get(ADMIN_TOKEN_ENV)
    if from_env:
        return from_env
    saved = data_dir / "admin-token"
    if saved.is_file():
        return saved.read_text().strip()
    token = "tln_" + secrets.token_urlsafe(32)
    saved.write_text(token + "\n")
    saved.chmod(0o600)
    return token


def _ensure_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(f"{host}:{port} is in use ({exc.strerror}); pass --port") from exc


class DevStack:
    def __init__(self, options: DevOptions, out: TextIO = sys.stdout) -> None:
        self.options = options
        self.out = out
        self.url = f"http://{options.host}:{options.port}"
        self.postgres = LocalPostgres(options.data_dir / "postgres", durable=True)
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.demo = True
        self.example_urls: dict[str, str] = {}  # example MCP server -> its URL, when started
        self._lock: TextIO | None = None
        self.pubsub: PubSubEmulator | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self) -> int:
        # Installed explicitly, SIGINT too: a process started in the background by a
        # non-interactive shell inherits SIGINT as ignored, and Python then never raises
        # KeyboardInterrupt.
        previous = signal.signal(signal.SIGTERM, _raise_stop)
        previous_int = signal.signal(signal.SIGINT, _raise_stop)
        try:
            self.start()
            return self.wait()
        except (KeyboardInterrupt, _Stop):
            self.say("talon dev: stopping")
            return 0
        finally:
            # A second Ctrl-C or SIGTERM must not cut the shutdown short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                self.stop()
            finally:
                signal.signal(signal.SIGINT, previous_int)
                signal.signal(signal.SIGTERM, previous)

    def start(self) -> None:
        options = self.options
        _ensure_port_free(options.host, options.port)
        if options.grpc is not None:
            ensure_grpc_port_free(*options.grpc)
        options.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        self.say(f"talon dev: PostgreSQL in {options.data_dir / 'postgres'}")
        self.postgres.start()
        self.postgres.ensure_database(DATABASE)
        token = _admin_token(options.data_dir)
        env = {
            **os.environ,
            "TALON_CONTROL_PLANE_DATABASE_URL": self.postgres.url(DATABASE),
            ADMIN_TOKEN_ENV: token,
            "PYTHONUNBUFFERED": "1",
        }
        if options.config is not None:
            env["TALON_CONFIG"] = str(options.config.resolve())
        if options.example_tools:  # the worker and the gateway (its agent tools route) read them
            for name, value in EXAMPLE_SECRETS.items():
                env.setdefault(name, value)
        if options.broker == "pubsub":
            self.pubsub = PubSubEmulator(options.data_dir)
            env.update(self.pubsub.start(self.say, options.config))
        ops_port = self._spawn_ops_mcp(env)
        env["TALON_GATEWAY_OPS_MCP_UPSTREAM"] = f"http://127.0.0.1:{ops_port}"
        self._spawn_gateway(env)
        self._wait_healthy()
        if options.grpc is not None:
            self._spawn("gRPC server", grpc_command(*options.grpc), env)
            wait_for_port(local_host(options.grpc[0]), options.grpc[1], timeout=60)
        wait_for_port("127.0.0.1", ops_port, timeout=60)
        # Offline by design: without credentials the example agent answers with the demo model.
        self.demo = not os.environ.get("OPENAI_API_KEY")
        if options.example_tools:
            self._spawn_example_tools(env)
        self._spawn_worker(env)
        self._apply_manifests_once(token)
        model = "demo provider (no OPENAI_API_KEY set)" if self.demo else "OpenAI (OPENAI_API_KEY)"
        self.say(
            f"\nTalon is running.\n  gateway  {self.url}\n  UI       {self.url}/ui/\n"
            f"  token    {token}\n"
            f"  model    {model}\n  ops MCP  {self.url}/mcp/talon-ops\n"
            + (f"  gRPC     {options.grpc[0]}:{options.grpc[1]}\n" if options.grpc else "")
            + "\n"
            f"  export TALON_URL={self.url} TALON_TOKEN={token}\n"
            "  talon get agents -n acme\n\nCtrl-C stops everything."
        )

    def _lock_data_dir(self) -> None:
        """One `talon dev` per data dir: a second would share, then stop, the same cluster."""
        self._lock = (self.options.data_dir / "dev.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock.close()
            self._lock = None
            raise CliError(
                f"another `talon dev` is using {self.options.data_dir}; stop it first"
            ) from exc

    def _spawn_gateway(self, env: dict[str, str]) -> None:
        command = gateway_command(self.options.host, self.options.port)
        self._spawn("gateway", command, {**GATEWAY_ENV, **env})

    def _spawn_ops_mcp(self, env: dict[str, str]) -> int:
        """The ops_mcp function on a private port; the gateway forwards /mcp/talon-ops."""
        port = free_port()
        source = functions_dir() / "ops_mcp" / "main.py"
        command = [
            sys.executable, "-m", "functions_framework", "--target", "ops_mcp", "--asgi",
            "--source", str(source), "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        self._spawn("ops_mcp", command, env)
        return port

    def _spawn_example_tools(self, env: dict[str, str]) -> None:
        """The example Stripe- and HubSpot-like MCP servers the example manifests bind, each on
        a free port (the example MCPServer objects are pointed at them: dev_examples.py)."""
        for kind in EXAMPLE_SERVERS:
            port = free_port()
            command = [sys.executable, "-m", "talon.examples.mcp_servers", kind, str(port)]
            name = f"example {kind} MCP server"
            self._spawn(name, command, env)
            self._wait_listening(name, port)
            self.example_urls[kind] = example_url(port)
            self.say(f"talon dev: {name} at {self.example_urls[kind]}")

    def _wait_listening(self, name: str, port: int, timeout: float = 30.0) -> None:
        """Until the process just started accepts connections on `port`; an error naming the
        port if it exits first (e.g. another program took the port meanwhile)."""
        process = self.processes[-1][1]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise CliError(f"the {name} exited (code {process.returncode}) instead of "
                               f"listening on 127.0.0.1:{port}")  # fmt: skip
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.05)
        raise CliError(f"the {name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")

    def _spawn_worker(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "talon.cli.main", "worker"]
        if self.demo:
            command.append("--demo-fallback")
        self._spawn("worker", command, env)

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        # A new session: Ctrl-C reaches only this process, which then stops children in order.
        process = subprocess.Popen(command, env=env, start_new_session=True)
        self.processes.append((name, process))

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes:
                if process.poll() is not None:
                    raise CliError(f"{name} exited with code {process.returncode} while starting")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise CliError(f"the gateway did not answer {self.url}/healthz within {timeout:.0f}s")

    def _apply_manifests_once(self, token: str) -> None:
        folder = self.options.manifests
        data_dir = self.options.data_dir
        marker = data_dir / APPLIED_MARKER
        with Client(self.url, token) as client:
            try:
                if folder is not None and not marker.exists() and not folder.is_dir():
                    self.say(f"talon dev: no manifests folder at {folder}; nothing applied")
                elif folder is not None and not marker.exists():
                    documents = pointed(read_documents([str(folder)]), self.example_urls,
                                        data_dir)  # fmt: skip
                    result = apply_documents(client, documents)
                    for line in summary_lines(result, dry_run=False):
                        self.say(f"  {line}")
                    marker.write_text(f"{folder.resolve()}\n")
                if self.example_urls:
                    repoint(client, self.example_urls, data_dir, self.say)
            except TalonError as exc:
                raise CliError(f"applying {folder}: {error_line(exc, self.url)}") from exc

    def wait(self) -> int:
        while True:
            for name, process in self.processes:
                if process.poll() is not None:
                    self.say(f"talon dev: {name} exited with code {process.returncode}")
                    return 1
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to every child, then, after STOP_GRACE_SECONDS, SIGKILL to the process
        groups still there: gunicorn would otherwise let open SSE streams run on for its 30 s
        graceful timeout (their clients resume with Last-Event-ID against the next start)."""
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _, process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for _, process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # its own session: pgid == pid
                process.wait()
        self.processes.clear()
        if self.pubsub is not None:
            self.pubsub.stop()
        if self._lock is not None:  # only the holder of the data dir stops its cluster
            self.postgres.stop()
            self._lock.close()
            self._lock = None


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()
