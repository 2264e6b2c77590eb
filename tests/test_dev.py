"""`talon dev` end to end: a real PostgreSQL, the gateway under functions-framework, manifests
applied once, a clean stop on SIGTERM and Ctrl-C, and data kept across restarts."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from test_ops_mcp import mcp_call

from conftest import ROOT
from talon.client import Client
from talon.store.local_postgres import free_port

pytestmark = pytest.mark.slow
TALON = [sys.executable, "-m", "talon.cli.main"]


class DevProcess:
    def __init__(
        self, data_dir: Path, port: int, *extra: str, sigint_ignored: bool = False
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
        self.grpc_port = free_port()

        def ignore_sigint() -> None:  # as a non-interactive shell's `talon dev &` starts it
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.process = subprocess.Popen(
            [*TALON, "dev", "--port", str(port), "--data-dir", str(data_dir),
             "--grpc-port", str(self.grpc_port), *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=ignore_sigint if sigint_ignored else None,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, needle: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.output.append(line)
            if needle in line:
                return
        raise AssertionError(f"{needle!r} not seen; output:\n{''.join(self.output)}")

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=60)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's private tmp dir: the PostgreSQL server runs as an unprivileged user.
    path = Path(tempfile.mkdtemp(prefix="talon-dev-test-"))
    path.chmod(0o755)
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def talon(url: str, token: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TALON_URL": url, "TALON_TOKEN": token, "TALON_CLI_CONFIG": os.devnull}
    return subprocess.run([*TALON, *argv], env=env, capture_output=True, text=True, timeout=60)


def example_url(output: str, kind: str) -> str:
    match = re.search(rf"example {kind} MCP server at (http://127\.0\.0\.1:\d+/mcp)", output)
    assert match, output
    return match.group(1)


def server_url(url: str, token: str, name: str) -> str:
    got = talon(url, token, "get", "mcp-server", name, "-n", "acme", "-o", "jsonpath={.spec.url}")
    assert got.returncode == 0, got.stderr
    return got.stdout.strip()


def test_talon_dev_serves_the_examples_and_stops_cleanly(data_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The manifests' historical port taken by someone else: the examples run on free ports.
    squatter = socket.socket()
    with contextlib.suppress(OSError):
        squatter.bind(("127.0.0.1", 8091))
        squatter.listen()
    dev = DevProcess(data_dir, port)
    try:
        dev.wait_for("Ctrl-C stops everything")
        output = "".join(dev.output)
        assert "agent/customer-support -n acme created" in output
        # The gRPC server, on gateway.grpcAddr's host (talon.yaml: 0.0.0.0) at --grpc-port.
        assert f"  gRPC     0.0.0.0:{dev.grpc_port}" in output
        assert grpc_health(f"127.0.0.1:{dev.grpc_port}") == "SERVING"
        first_stripe = example_url(output, "stripe")
        assert first_stripe != "http://127.0.0.1:8091/mcp"
        token = (data_dir / "admin-token").read_text().strip()
        assert token in output
        assert server_url(url, token, "stripe-readonly") == first_stripe
        assert server_url(url, token, "hubspot-readonly") == example_url(output, "hubspot")
        listed = talon(url, token, "get", "agents", "-n", "acme")
        assert listed.returncode == 0, listed.stderr
        assert "customer-support" in listed.stdout and "Resolved" in listed.stdout
        # The seed's session example, offline with the demo provider.
        sent = talon(url, token, "send", "customer-support", "enterprise-renewals",
                     "Review renewals due in 14 days.", "-n", "acme")  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        steps = [line.split()[0] for line in sent.stdout.splitlines() if line.endswith(
            ("done", "(primary/demo:demo (no credentials))"))]  # fmt: skip
        # Knowledge, then the skill, then the Stripe-like tool its playbook points to (the
        # example MCP server, through the template's binding), then the answer.
        assert steps == [
            "load-knowledge", "call-model", "call-skill.renewal-outreach", "call-model",
            "call-stripe-readonly.list_invoices", "call-model", "write-next-message",
        ], sent.stdout  # fmt: skip
        assert "in_1001" in sent.stdout  # the invoice the tool returned, in the answer
        described = talon(url, token, "describe", "agent", "customer-support", "-n", "acme")
        assert re.search(
            r"stripe-readonly\.list_invoices +mcp stripe-readonly \(list_invoices\) "
            r"+customer-support-stripe",
            described.stdout,
        ), described.stdout
        assert re.search(r"stripe-readonly +available", described.stdout), described.stdout
        session = talon(url, token, "get", "session", "enterprise-renewals", "-n", "acme",
                        "--agent", "customer-support", "-o", "yaml")  # fmt: skip
        view = yaml.safe_load(session.stdout)
        assert view["messages"][0] == {"role": "user",
                                       "content": "Review renewals due in 14 days."}  # fmt: skip
        assert view["messages"][-1]["role"] == "assistant"
        assert "in_1001" in view["messages"][-1]["content"]
        # The same session through talon-ops, under the gateway's base URL, with a token
        # that sees only acme.
        with Client(url, token) as sdk:
            scoped = sdk.create_token("ops", role="read", namespaces=["acme"]).token
        error, history = mcp_call(f"{url}/mcp/talon-ops", scoped, "read_session",
                                  namespace="acme", agent="customer-support",
                                  session_id="enterprise-renewals")  # fmt: skip
        assert not error and history["messages"][0]["content"] == "Review renewals due in 14 days."
        assert mcp_call(f"{url}/mcp/talon-ops", scoped, "list_namespaces") == (
            False, {"namespaces": ["acme"]}
        )  # fmt: skip
        # A change made now must survive the restart below.
        deleted = talon(url, token, "delete", "schedule", "renewal-check", "-n", "acme")
        assert deleted.returncode == 0, deleted.stderr
    finally:
        code = dev.stop(signal.SIGTERM)
        squatter.close()
    assert code == 0, "".join(dev.output)
    assert "talon dev: stopping" in "".join(dev.output)
    assert not (data_dir / "postgres" / "data" / "postmaster.pid").exists()

    again = DevProcess(data_dir, port, sigint_ignored=True)
    stream = None
    try:
        again.wait_for("Ctrl-C stops everything")
        assert " created" not in "".join(again.output)  # manifests are applied on first start only
        token = (data_dir / "admin-token").read_text().strip()
        # The stored example servers follow the servers to their new ports.
        output = "".join(again.output)
        assert server_url(url, token, "stripe-readonly") == example_url(output, "stripe")
        schedules = talon(url, token, "get", "schedules", "-n", "acme")
        assert schedules.returncode == 0 and "renewal-check" not in schedules.stdout
        agents = talon(url, token, "get", "agents", "-n", "acme")
        assert "customer-support" in agents.stdout
        history = talon(url, token, "get", "session", "enterprise-renewals", "-n", "acme",
                        "--agent", "customer-support", "-o", "json")  # fmt: skip
        assert json.loads(history.stdout)["messageCount"] == 6  # the thread survived
        # A stream left open: stopping must not wait for it.
        stream = httpx.stream("GET", f"{url}/v1/ns/acme/agents/customer-support/sessions/"
                              "enterprise-renewals/stream", headers={
                                  "Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
        assert stream.__enter__().status_code == 200
    finally:
        started = time.monotonic()
        code = again.stop(signal.SIGINT)
        stopped_in = time.monotonic() - started
        if stream is not None:
            with contextlib.suppress(httpx.HTTPError):
                stream.__exit__(None, None, None)
    assert code == 0, "".join(again.output)
    assert stopped_in < 5.0, f"stopping took {stopped_in:.1f} s"
    assert "Traceback" not in "".join(again.output), "".join(again.output)
    assert not (data_dir / "postgres" / "data" / "postmaster.pid").exists()


def grpc_health(address: str) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_talon_dev_refuses_a_busy_grpc_port(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
        result = subprocess.run(
            [*TALON, "dev", "--port", str(free_port()), "--host", "127.0.0.1",
             "--grpc-port", str(port), "--data-dir", str(data_dir)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"the gRPC port 127.0.0.1:{port} is in use" in result.stderr
    assert "--grpc-port" in result.stderr


def test_talon_dev_refuses_a_busy_port(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
        result = subprocess.run(
            [*TALON, "dev", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is in use" in result.stderr


def test_talon_dev_on_the_pubsub_emulator_with_the_pull_worker(data_dir: Path) -> None:
    """`talon dev --broker pubsub`: the seed's configuration (gcp_pubsub, pullMode) on the
    emulator, which talon dev starts on a free port and stops with everything else."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dev = DevProcess(data_dir, port, "--broker", "pubsub")
    try:
        dev.wait_for("Ctrl-C stops everything", timeout=180)
        output = "".join(dev.output)
        emulator = output.split("Pub/Sub emulator on ", 1)[1].split()[0]
        token = (data_dir / "admin-token").read_text().strip()
        sent = talon(url, token, "send", "customer-support", "enterprise-renewals",
                     "Review renewals due in 14 days.", "-n", "acme")  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert "turn completed" in sent.stdout and "in_1001" in sent.stdout, sent.stdout
    finally:
        code = dev.stop(signal.SIGTERM)
    assert code == 0, "".join(dev.output)
    assert "Traceback" not in "".join(dev.output), "".join(dev.output)
    host, _, emulator_port = emulator.rpartition(":")
    with pytest.raises(OSError):  # the emulator stopped with talon dev
        socket.create_connection((host, int(emulator_port)), timeout=2).close()
