"""The gcloud Pub/Sub emulator for the benchmarks that run Talon as it is deployed: the gateway
publishes dispatch messages, the emulator pushes them to dispatch function instances.

`Emulator` starts it in its own process group; `push_topology` creates the dispatch and
lifecycle topics and the dispatch topic's push subscription; `broker_env` is the settings that
point the gateway and the dispatch function at it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess

# Module import: the package has no type hints (see shared/talon/broker/pubsub.py).
import google.cloud.pubsub_v1 as pubsub_v1

from talon.store.local_postgres import free_port, wait_for_port

PROJECT = "talon-bench"
DISPATCH_TOPIC = "bench-dispatch"
LIFECYCLE_TOPIC = "bench-lifecycle"


class Emulator:
    def __init__(self) -> None:
        if shutil.which("gcloud") is None:
            raise SystemExit("gcloud (with the Pub/Sub emulator) is needed")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            ["gcloud", "beta", "emulators", "pubsub", "start",
             f"--host-port={self.host}", f"--project={PROJECT}", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def wait(self) -> None:
        wait_for_port("127.0.0.1", self.port, timeout=60)
        # The Google clients in this process (topology, benchmarks' checks) find it here.
        os.environ["PUBSUB_EMULATOR_HOST"] = self.host

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def broker_env(emulator: Emulator) -> dict[str, str]:
    return {
        "PUBSUB_EMULATOR_HOST": emulator.host,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER": "gcp_pubsub",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PROJECT": PROJECT,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_TOPIC": DISPATCH_TOPIC,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_TOPIC": LIFECYCLE_TOPIC,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_VERIFICATION": "none",
    }


def push_topology(endpoint: str) -> None:
    """The topics, and the dispatch topic's push subscription to `endpoint` (an URL)."""
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for name in (DISPATCH_TOPIC, LIFECYCLE_TOPIC):
        publisher.create_topic(name=publisher.topic_path(PROJECT, name))
    subscriber.create_subscription(
        name=subscriber.subscription_path(PROJECT, "bench-push"),
        topic=publisher.topic_path(PROJECT, DISPATCH_TOPIC),
        push_config={"push_endpoint": endpoint},
        ack_deadline_seconds=60,
    )
