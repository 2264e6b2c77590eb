"""`talon dev --broker pubsub`: the gcloud Pub/Sub emulator on a free port, with the pull-mode
topics and subscriptions (dead-letter policy, retry policy, dead-letter subscription), and
the settings that put the gateway and `talon worker` on it: the seed's configuration
(`message_broker.driver: gcp_pubsub`, `worker.pullMode: true`) one command away.

The emulator keeps its messages in memory. A turn left open when `talon dev` stops is taken
up again by the next message posted to its session (the worker drives a session's turns in
order, the oldest first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from talon.cli.client import CliError
from talon.config import load_settings
from talon.store.local_postgres import free_port, wait_for_port

PROJECT = "talon-dev"
EMULATOR_HOST_ENV = "PUBSUB_EMULATOR_HOST"


def emulator_command(port: int) -> list[str]:
    return ["gcloud", "beta", "emulators", "pubsub", "start",
            f"--host-port=127.0.0.1:{port}", f"--project={PROJECT}", "--quiet"]  # fmt: skip


class PubSubEmulator:
    def __init__(self, log_dir: Path) -> None:
        self.log_path = log_dir / "pubsub-emulator.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.host = ""

    def start(self, say: Callable[[str], None], config: Path | None) -> dict[str, str]:
        """Start the emulator and create the topology (names from `config`, project
        talon-dev); return the environment for the gateway and the worker."""
        if shutil.which("gcloud") is None:
            raise CliError("--broker pubsub needs gcloud with the Pub/Sub emulator component "
                           "(gcloud components install pubsub-emulator)")  # fmt: skip
        port = free_port()
        self.host = f"127.0.0.1:{port}"
        say(f"talon dev: Pub/Sub emulator on {self.host} (log: {self.log_path})")
        with self.log_path.open("w") as log:
            # Its own process group: gcloud starts a Java child that must stop with it.
            self.process = subprocess.Popen(
                emulator_command(port), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=tempfile.gettempdir(),
            )  # fmt: skip
        try:
            wait_for_port("127.0.0.1", port, timeout=90)
        except Exception as exc:
            raise CliError(f"the Pub/Sub emulator did not start; see {self.log_path}") from exc
        env = {
            EMULATOR_HOST_ENV: self.host,
            "TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER": "gcp_pubsub",
            "TALON_CONTROL_PLANE_MESSAGE_BROKER_PROJECT": PROJECT,
            "TALON_WORKER_PULL_MODE": "true",
        }
        os.environ[EMULATOR_HOST_ENV] = self.host  # for the clients below, in this process
        from talon.broker.pubsub_topology import create_pull_topology  # Google import

        settings = load_settings(config, {**os.environ, **env}).control_plane.message_broker
        # Quick retries: locally a failing turn should show its dead letter within seconds.
        create_pull_topology(settings, minimum_backoff_seconds=1, maximum_backoff_seconds=10)
        return env

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        # Whatever of the group is left (the Java child outlives gcloud on a slow stop).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
