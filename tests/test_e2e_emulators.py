"""End to end on emulators, wired as the cloud is: the four functions as separate
functions-framework processes, configured by the environment variables Terraform sets (read
from terraform/modules/functions), the Pub/Sub emulator pushing both topics to dispatch, the
Cloud Tasks emulator calling scheduler, PostgreSQL. A session turn, a schedule wake and a
talon-ops read go through that wiring.

Local stand-ins where the emulators cannot do what Google does: a database URL instead of
the Cloud SQL connector, and shared-secret checks instead of OIDC (the emulators sign nothing).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.cloud import pubsub_v1, tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from test_deploy import _env_of
from test_ops_mcp import mcp_call

from conftest import ADMIN_TOKEN, ROOT, Api, read_stream
from talon.cli.manifest_files import read_documents
from talon.store.local_postgres import free_port, wait_for_port

pytestmark = pytest.mark.slow
PROJECT, LOCATION = "talon-e2e", "us-central1"
PUSH_TOKEN, CALLBACK_TOKEN = "e2e-push-secret", "e2e-callback-secret"
SESSIONS = "/v1/ns/acme/agents/customer-support/sessions"
_runs = itertools.count()


def _terraform_env(function: str, values: dict[str, str]) -> dict[str, str]:
    """The variables Terraform gives `function`, with local values. A name Terraform sets
    that the local wiring has no value for fails the test, so the two cannot drift apart."""
    plain, secrets = _env_of(function)
    env = {}
    for name in [*plain, *secrets]:
        assert name in values, f"no local value for {name}, which Terraform sets on {function}"
        if values[name] is not None:
            env[name] = values[name]
    return env


@pytest.fixture
def wiring(
    database_url: str,
    pubsub_emulator: str,
    tasks_emulator: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    run = next(_runs)
    ports = {name: free_port() for name in ("gateway", "dispatch", "scheduler", "ops_mcp")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    topics = {"dispatch": f"e2e-dispatch-{run}", "lifecycle": f"e2e-lifecycle-{run}"}
    queue = f"e2e-scheduler-{run}"
    values: dict[str, str | None] = {
        "TALON_LOG_FORMAT": "text",
        # Telemetry goes to Cloud Trace and Monitoring in the cloud; nowhere here (no network):
        # the exporters stay off (tests/test_telemetry.py covers them with a local receiver).
        "OTEL_TRACES_EXPORTER": None,
        "OTEL_METRICS_EXPORTER": None,
        "OTEL_TRACES_SAMPLER": None,
        "OTEL_TRACES_SAMPLER_ARG": None,
        "GOOGLE_CLOUD_PROJECT": None,
        # The Cloud SQL connector cannot reach a local server: a URL instead (and no password
        # secret; it is in the URL).
        "TALON_CONTROL_PLANE_DATABASE_INSTANCE_CONNECTION_NAME": None,
        "TALON_CONTROL_PLANE_DATABASE_NAME": None,
        "TALON_CONTROL_PLANE_DATABASE_USER": None,
        "TALON_CONTROL_PLANE_DATABASE_IP_TYPE": None,
        "TALON_CONTROL_PLANE_DATABASE_PASSWORD": None,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER": "gcp_pubsub",
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PROJECT": PROJECT,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_DISPATCH_TOPIC": topics["dispatch"],
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_LIFECYCLE_TOPIC": topics["lifecycle"],
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_VERIFICATION": "token",  # no OIDC here
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_AUDIENCE": urls["dispatch"],
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_SERVICE_ACCOUNT_EMAIL": "push@e2e.example",
        "TALON_CONTROL_PLANE_SCHEDULER_BACKEND": "cloud_tasks",
        "TALON_CONTROL_PLANE_SCHEDULER_PROJECT": PROJECT,
        "TALON_CONTROL_PLANE_SCHEDULER_LOCATION": LOCATION,
        "TALON_CONTROL_PLANE_SCHEDULER_QUEUE": queue,
        "TALON_CONTROL_PLANE_SCHEDULER_CALLBACK_URL": urls["scheduler"],
        "TALON_CONTROL_PLANE_SCHEDULER_SERVICE_ACCOUNT_EMAIL": "tasks@e2e.example",
        "TALON_CONTROL_PLANE_SCHEDULER_CALLBACK_VERIFICATION": "token",  # no OIDC here
        "TALON_WORKER_PULL_MODE": "false",
        "TALON_WORKER_SKILLS_DIR": str(ROOT / "skills"),
        "TALON_GATEWAY_OPS_MCP_UPSTREAM": urls["ops_mcp"],
        "TALON_GATEWAY_OPS_MCP_ID_TOKEN": "false",  # no metadata server to mint one
        # Exactly its own host, as in the cloud: what the gateway's forwarding sends.
        "TALON_GATEWAY_OPS_MCP_ALLOWED_HOSTS": f"127.0.0.1:{ports['ops_mcp']}",
        "TALON_GATEWAY_PUBLIC_URL": urls["gateway"],
        "TALON_ADMIN_TOKEN": ADMIN_TOKEN,
        "FUNCTION_USE_ASGI": "true",
    }
    local = {
        "TALON_CONTROL_PLANE_DATABASE_URL": database_url,
        "TALON_CONTROL_PLANE_MESSAGE_BROKER_PUSH_TOKEN": PUSH_TOKEN,
        "TALON_CONTROL_PLANE_SCHEDULER_CALLBACK_TOKEN": CALLBACK_TOKEN,
        "TALON_CONTROL_PLANE_SCHEDULER_EMULATOR_HOST": tasks_emulator,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator,
        "OPENAI_API_KEY": "",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("TALON_")}
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for topic in topics.values():
        path = publisher.topic_path(PROJECT, topic)
        publisher.create_topic(name=path)
        subscriber.create_subscription(
            name=subscriber.subscription_path(PROJECT, f"{topic}-push"), topic=path,
            # No secret in the URL: the functions sign each message with the push token.
            push_config={"push_endpoint": f"{urls['dispatch']}/"},
            ack_deadline_seconds=60,
        )  # fmt: skip
    tasks = tasks_v2.CloudTasksClient(
        transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(tasks_emulator))
    )
    tasks.create_queue(
        parent=f"projects/{PROJECT}/locations/{LOCATION}",
        queue=tasks_v2.Queue(name=tasks.queue_path(PROJECT, LOCATION, queue)),
    )
    processes = []
    logs = {}
    for name, port in ports.items():
        env = {**base, **_terraform_env(name, values), **local}
        if name != "ops_mcp":
            env.pop("FUNCTION_USE_ASGI", None)
        logs[name] = tmp_path / f"{name}.log"
        command = [sys.executable, "-m", "functions_framework", "--target", name,
                   "--source", str(ROOT / "functions" / name / "main.py"),
                   "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        processes.append(subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=logs[name].open("w"), stderr=subprocess.STDOUT
        ))  # fmt: skip
    try:
        for port in ports.values():
            wait_for_port("127.0.0.1", port, timeout=60)
        yield {"urls": urls, "logs": logs}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        tasks.delete_queue(name=tasks.queue_path(PROJECT, LOCATION, queue))
        for topic in topics.values():
            subscriber.delete_subscription(
                subscription=subscriber.subscription_path(PROJECT, f"{topic}-push")
            )
            publisher.delete_topic(topic=publisher.topic_path(PROJECT, topic))


def test_a_turn_a_schedule_wake_and_talon_ops_through_the_cloud_wiring(
    wiring: dict[str, Any], model_server: Any
) -> None:
    api = Api(wiring["urls"]["gateway"], ADMIN_TOKEN)
    try:
        _run_scenario(api, wiring, model_server.url)
    except BaseException:
        for name, log in wiring["logs"].items():
            print(f"--- {name} ---\n{log.read_text()[-4000:]}")
        raise
    finally:
        api.http.close()


def _run_scenario(api: Api, wiring: dict[str, Any], model_url: str) -> None:
    for _ in range(100):  # the gateway migrates the database on its first request
        try:
            if api.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
    documents = [d.body for d in read_documents([str(ROOT / "manifests")])]
    api.ok("POST", "/v1/apply", json={"items": documents})
    # The example's OpenAI profile, pointed at a local OpenAI-compatible server.
    profile = {"name": "primary", "model": {"provider": "openai", "name": "gpt-4o",
                                            "baseUrl": model_url}}  # fmt: skip
    api.ok("PATCH", "/v1/ns/acme/agent-templates/customer-support",
           json={"definition": {"modelPolicy": {"profiles": [profile]}}})  # fmt: skip

    # A turn: gateway -> outbox -> Pub/Sub emulator -> push -> dispatch -> turn.
    api.ok("POST", SESSIONS, 201, json={"id": "enterprise-renewals"})
    accepted = api.ok("POST", f"{SESSIONS}/enterprise-renewals/message", 202,
                      json={"content": "Hello from the emulators."})  # fmt: skip
    events = read_stream(api, f"{SESSIONS}/enterprise-renewals/stream",
                         last_event_id=accepted["streamFrom"],
                         params={"untilTurnEnd": "true"}, timeout=90)  # fmt: skip
    assert events[-1]["type"] == "turn.completed", events[-3:]

    # A schedule wake: gateway -> Cloud Tasks emulator -> scheduler -> outbox -> dispatch.
    at = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    api.ok("PATCH", "/v1/ns/acme/schedules/renewal-check", json={"spec": {
        "kind": "once", "cron": None, "at": at.isoformat().replace("+00:00", "Z")}})  # fmt: skip
    after = events[-1]["id"]
    deadline = time.monotonic() + 30
    while not api.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"]:
        assert time.monotonic() < deadline, "the Cloud Task never reached the scheduler"
        time.sleep(0.2)
    woken = read_stream(api, f"{SESSIONS}/enterprise-renewals/stream", last_event_id=after,
                        params={"untilTurnEnd": "true"}, timeout=90)  # fmt: skip
    queued = next(e for e in woken if e["type"] == "turn.queued")
    assert queued["data"]["source"] == "schedule:renewal-check"
    assert woken[-1]["type"] == "turn.completed"
    fires = api.ok("GET", "/v1/ns/acme/schedules/renewal-check/fires")["items"]
    assert [(f["reason"], f["outcome"]) for f in fires] == [("once", "queued")]

    # talon-ops through the gateway's URL, with a token that sees only acme.
    token = api.token("read", ["acme"])
    error, history = mcp_call(f"{wiring['urls']['gateway']}/mcp/talon-ops", token,
                              "read_session", namespace="acme", agent="customer-support",
                              session_id="enterprise-renewals")  # fmt: skip
    assert not error
    contents = [m["content"] for m in history["messages"] if m["role"] == "user"]
    assert contents[0] == "Hello from the emulators."
    assert contents[-1].startswith("Review accounts renewing in the next 14 days")
