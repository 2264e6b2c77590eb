"""Traces and metrics. The gateway (`talon.serve`, as `talon dev` runs it) and a pull worker
run as separate processes exporting OTLP/HTTP to a local receiver: one trace per turn (the
turn's span a child of the POST that queued it, its steps its children, an attempt resumed
after a SIGKILL linked to the attempt before it) and the metrics a turn moves. Also: the
receiver double refuses what a collector refuses, log lines carry the trace ids Cloud Logging
correlates by, and nothing is exported (or installed) without an exporter configured."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from otlp_receiver import OtlpReceiver, ReceivedSpan

import samples
from conftest import ADMIN_TOKEN, ROOT, TEST_CONFIG
from talon.cli.dev import GATEWAY_ENV, gateway_command
from talon.grpc.gen import namespaces_pb2, namespaces_pb2_grpc, sessions_pb2, sessions_pb2_grpc
from talon.logs import SAMPLED_FIELD, SPAN_FIELD, TRACE_FIELD, JsonFormatter
from talon.store.database import Database
from talon.store.local_postgres import free_port
from talon.telemetry.setup import exporter_names

SESSION = "/v1/ns/acme/agents/bot/sessions/s1"
SERVER, CONSUMER = 2, 5  # OTLP span kinds


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    served = OtlpReceiver()
    yield served
    served.close()
    assert served.refused == []


def _otel_env(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TALON_", "OTEL_"))}  # fmt: skip
    return env | {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a tenth of a second
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
    }


class _Process:
    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def processes() -> Iterator[list[_Process]]:
    started: list[_Process] = []
    yield started
    for process in started:
        process.stop(signal.SIGKILL)


def _gateway(
    receiver: OtlpReceiver, database_url: str, tmp_path: Path, processes: list[_Process]
) -> httpx.Client:
    port = free_port()
    env = _otel_env(receiver, "talon-gateway") | GATEWAY_ENV | {
        "TALON_CONTROL_PLANE_DATABASE_URL": database_url, "TALON_ADMIN_TOKEN": ADMIN_TOKEN,
        "TALON_CONFIG": str(TEST_CONFIG),
    }  # fmt: skip
    served = _Process(gateway_command("127.0.0.1", port), env, tmp_path / "gateway.log")
    processes.append(served)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                return client
        except httpx.TransportError:
            pass
        if served.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError((tmp_path / "gateway.log").read_text())
        time.sleep(0.2)


def _worker(
    receiver: OtlpReceiver, database_url: str, tmp_path: Path, processes: list[_Process]
) -> _Process:
    """tests/tool_worker.py: a pull worker with a `get_renewals` tool (lease 1.5 s)."""
    env = _otel_env(receiver, "talon-worker") | {"PYTHONPATH": str(ROOT / "tests")}
    worker = _Process(
        [sys.executable, str(ROOT / "tests" / "tool_worker.py"), database_url,
         str(tmp_path / "calls.jsonl")],
        env, tmp_path / f"worker-{len(processes)}.log",
    )  # fmt: skip
    processes.append(worker)
    return worker


def _setup(client: httpx.Client, model_url: str) -> None:
    template = samples.template("acme")
    template["definition"]["modelPolicy"] = {
        "profiles": [{"name": "primary",
                      "model": {"provider": "openai", "name": "model-a", "baseUrl": model_url}}],
        "retry": {"maxAttempts": 1}, "turnTimeoutSeconds": 60,
    }  # fmt: skip
    items = [samples.namespace("acme"), template, samples.agent("acme")]
    assert client.post("/v1/apply", json={"items": items}).status_code == 200
    assert client.post("/v1/ns/acme/agents/bot/sessions", json={"id": "s1"}).status_code == 201


def _wait_turn(client: httpx.Client, turn_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        turn = client.get(f"{SESSION}/turns/{turn_id}").json()
        if turn["state"] not in ("queued", "running"):
            return turn
        time.sleep(0.1)
    raise AssertionError(f"turn {turn_id} did not finish")


def _one(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.service, s.name) for s in spans])
    return found[0]


@pytest.mark.slow
def test_a_turn_is_one_trace_from_the_post_to_its_last_step_and_moves_its_metrics(
    receiver: OtlpReceiver, database_url: str, tmp_path: Path, processes: list[_Process],
    model_server: Any,
) -> None:  # fmt: skip
    client = _gateway(receiver, database_url, tmp_path, processes)
    _setup(client, model_server.url)
    model_server.add(
        {"tool_calls": [{"name": "get_renewals", "arguments": {"days": 14}}], "usage": [100, 20]},
        {"content": "Globex renews.", "usage": [300, 40]},
    )
    _worker(receiver, database_url, tmp_path, processes)
    # A caller's own trace is continued, as Cloud Run's front end's would be.
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{caller_trace}-00f067aa0ba902b7-01"
    accepted = client.post(f"{SESSION}/message", json={"content": "Renewals?"},
                           headers={"traceparent": traceparent})  # fmt: skip
    assert accepted.status_code == 202
    assert _wait_turn(client, accepted.json()["turnId"])["state"] == "completed"

    steps = ("load-knowledge", "call-model", "call-get_renewals", "write-next-message")
    spans = receiver.wait_for(lambda got: {s.name for s in got} >= {"turn", *steps}
                              and sum(s.name == "call-model" for s in got) == 2)  # fmt: skip
    post = _one(spans, service="talon-gateway",
                name="POST /v1/ns/<ns>/agents/<agent>/sessions/<session_id>/message")  # fmt: skip
    assert post.trace_id == caller_trace and post.parent_id == "00f067aa0ba902b7"
    assert post.kind == SERVER and post.attributes["http.response.status_code"] == 202
    # The broker's delivery continues the POST's trace (the outbox row carried it); the turn
    # is the POST's child too, linked to the delivery that brought it to this worker.
    deliver = _one(spans, service="talon-worker", name="deliver dispatch")
    assert deliver.trace_id == caller_trace and deliver.parent_id == post.span_id
    assert deliver.kind == CONSUMER and deliver.attributes["talon.delivery.attempt"] == 1
    turn = _one(spans, service="talon-worker", name="turn")
    assert turn.trace_id == caller_trace and turn.parent_id == post.span_id
    assert turn.kind == CONSUMER and turn.links == [(caller_trace, deliver.span_id)]
    assert turn.attributes["talon.turn.id"] == accepted.json()["turnId"]
    assert turn.attributes["talon.turn.attempt"] == 1
    children = sorted((s for s in spans if s.parent_id == turn.span_id), key=lambda s: s.start_ns)
    assert [s.name for s in children] == [
        "load-knowledge", "call-model", "call-get_renewals", "call-model", "write-next-message"
    ]  # fmt: skip
    assert all(s.trace_id == caller_trace and s.service == "talon-worker" for s in children)
    assert all(turn.start_ns <= s.start_ns <= s.end_ns <= turn.end_ns for s in children)
    first_model, tool, second_model = children[1], children[2], children[3]
    assert first_model.attributes["gen_ai.system"] == "openai"
    assert first_model.attributes["gen_ai.request.model"] == "model-a"
    assert first_model.attributes["talon.profile"] == "primary"
    assert (first_model.attributes["gen_ai.usage.input_tokens"],
            first_model.attributes["gen_ai.usage.output_tokens"]) == (100, 20)  # fmt: skip
    assert second_model.attributes["gen_ai.usage.input_tokens"] == 300
    assert tool.attributes["talon.tool"] == "get_renewals"
    assert tool.attributes["talon.tool.is_error"] is False
    _the_metrics_the_turn_moved(receiver, client, processes)


def _wait_metric(receiver: OtlpReceiver, service: str, name: str, expected: Any,
                 **attributes: Any) -> None:  # fmt: skip
    deadline = time.monotonic() + 20
    while receiver.metric(service, name, **attributes) != [expected]:
        if time.monotonic() > deadline:
            raise AssertionError((service, name, attributes,
                                  receiver.metric(service, name, **attributes)))  # fmt: skip
        time.sleep(0.1)


def _the_metrics_the_turn_moved(
    receiver: OtlpReceiver, client: httpx.Client, processes: list[_Process]
) -> None:
    who = {"namespace": "acme", "agent": "bot"}
    worker = "talon-worker"
    _wait_metric(receiver, worker, "talon.turns.started", 1, **who)
    _wait_metric(receiver, worker, "talon.turns.ended", 1, outcome="completed", **who)
    assert receiver.metric(worker, "talon.turn.queue_wait", **who)[0][0] == 1
    assert receiver.metric(worker, "talon.turn.run_time", outcome="completed", **who)[0][0] == 1
    for kind, count in (("knowledge", 1), ("model", 2), ("tool", 1), ("write", 1)):
        assert receiver.metric(worker, "talon.step.duration", kind=kind)[0][0] == count, kind
    model = {"profile": "primary", "provider": "openai", "model": "model-a"}
    assert receiver.metric(worker, "talon.model.tokens", type="input", **model) == [400]
    assert receiver.metric(worker, "talon.model.tokens", type="output", **model) == [60]
    assert receiver.metric(worker, "talon.tool.calls", tool="get_renewals", outcome="ok") == [1]
    # With the worker gone, a queued turn waits in the outbox; cancelling it is counted by
    # the gateway, and an open stream is too while it is open.
    processes[-1].stop()
    accepted = client.post(f"{SESSION}/message", json={"content": "Again"}).json()
    with client.stream("GET", f"{SESSION}/stream") as stream:
        # Kept: a dropped iterator closes the response, and talon.serve notices at once.
        lines = stream.iter_lines()
        next(lines)
        _wait_metric(receiver, "talon-gateway", "talon.streams.open", 1, namespace="acme")
    assert client.post(f"{SESSION}/cancel").json()["cancelled"] == [accepted["turnId"]]
    _wait_metric(receiver, "talon-gateway", "talon.turns.ended", 1, outcome="cancelled", **who)
    _wait_metric(receiver, "talon-gateway", "talon.streams.open", 0, namespace="acme")
    deadline = time.monotonic() + 20
    while not receiver.metric("talon-gateway", "talon.outbox.depth", topic="dispatch"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert receiver.metric("talon-gateway", "talon.outbox.depth", topic="dispatch")[0] >= 1
    assert receiver.metric("talon-gateway", "talon.outbox.oldest_age", topic="dispatch")[0] >= 0
    assert receiver.metric("talon-gateway", "talon.db.pool.in_use")


@pytest.mark.slow
def test_an_attempt_resumed_after_a_crash_links_to_the_one_before(
    receiver: OtlpReceiver, database_url: str, db: Database, tmp_path: Path,
    processes: list[_Process], model_server: Any,
) -> None:  # fmt: skip
    client = _gateway(receiver, database_url, tmp_path, processes)
    _setup(client, model_server.url)
    model_server.add({"hang": 30, "content": "never delivered"}, {"content": "answered"})
    first = _worker(receiver, database_url, tmp_path, processes)
    accepted = client.post(f"{SESSION}/message", json={"content": "Hello"}).json()
    deadline = time.monotonic() + 30
    noted = None
    while noted is None and time.monotonic() < deadline:  # the first attempt is under way
        with db.transaction() as tx:
            noted = tx.scalar("SELECT attempt_span FROM turns WHERE id = %s",
                              (accepted["turnId"],))  # fmt: skip
        time.sleep(0.05)
    assert noted is not None
    while len(model_server.requests) < 1:
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    _worker(receiver, database_url, tmp_path, processes)
    assert _wait_turn(client, accepted["turnId"])["state"] == "completed"
    spans = receiver.wait_for(lambda got: any(s.name == "turn" for s in got))
    post = _one(spans, service="talon-gateway",
                name="POST /v1/ns/<ns>/agents/<agent>/sessions/<session_id>/message")  # fmt: skip
    resumed = _one(spans, name="turn")  # the killed attempt never exported its span
    assert resumed.attributes["talon.turn.attempt"] == 2
    assert resumed.parent_id == post.span_id and resumed.trace_id == post.trace_id
    _, trace_id, span_id, _ = noted.split("-")
    assert (trace_id, span_id) in resumed.links and trace_id == post.trace_id


@pytest.mark.slow
def test_every_grpc_call_is_a_server_span_continuing_the_callers_trace(
    receiver: OtlpReceiver, database_url: str, db: Database, tmp_path: Path,
    processes: list[_Process],
) -> None:  # fmt: skip
    _setup(_gateway(receiver, database_url, tmp_path, processes), "http://127.0.0.1:9")
    port = free_port()
    env = _otel_env(receiver, "talon-grpc") | {
        "TALON_CONTROL_PLANE_DATABASE_URL": database_url, "TALON_ADMIN_TOKEN": ADMIN_TOKEN,
        "TALON_CONFIG": str(TEST_CONFIG),
    }  # fmt: skip
    command = [sys.executable, "-m", "talon.grpc", "--address", f"127.0.0.1:{port}"]
    processes.append(_Process(command, env, tmp_path / "grpc.log"))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    caller = "0af7651916cd43dd8448eb211c80319c"
    metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),
                ("traceparent", f"00-{caller}-b7ad6b7169203331-01"))  # fmt: skip
    namespaces = namespaces_pb2_grpc.NamespacesStub(channel)
    namespaces.ListNamespaces(namespaces_pb2.ListNamespacesRequest(), metadata=metadata)
    with pytest.raises(grpc.RpcError) as missing:
        namespaces.GetNamespace(namespaces_pb2.GetNamespaceRequest(name="nope"),
                                metadata=metadata)  # fmt: skip
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    sessions = sessions_pb2_grpc.SessionsStub(channel)
    request = sessions_pb2.StreamEventsRequest(namespace="nope", agent="a", session_id="s")
    with pytest.raises(grpc.RpcError) as stream_missing:
        list(sessions.StreamEvents(request, metadata=metadata))
    assert stream_missing.value.code() == grpc.StatusCode.NOT_FOUND
    message = sessions_pb2.PostMessageRequest(namespace="acme", agent="bot", session_id="s1",
                                              content="hi")  # fmt: skip
    posted = sessions.PostMessage(message, metadata=metadata)
    channel.close()
    spans = receiver.wait_for(lambda found: len([s for s in found
                                                 if s.service == "talon-grpc"]) >= 4)  # fmt: skip
    # The turn it queued carries the call's trace, as one queued over HTTP does.
    post = _one(spans, service="talon-grpc", name="talon.v1.Sessions/PostMessage")
    with db.transaction() as tx:
        traceparent = tx.scalar("SELECT traceparent FROM turns WHERE id = %s",
                                (posted.turn_id,))  # fmt: skip
    assert traceparent == f"00-{caller}-{post.span_id}-01"
    listed = _one(spans, service="talon-grpc", name="talon.v1.Namespaces/ListNamespaces")
    assert listed.kind == SERVER and listed.trace_id == caller
    assert listed.parent_id == "b7ad6b7169203331"
    assert listed.attributes["rpc.system"] == "grpc"
    assert listed.attributes["rpc.service"] == "talon.v1.Namespaces"
    assert listed.attributes["rpc.method"] == "ListNamespaces"
    assert listed.attributes["rpc.grpc.status_code"] == 0 and listed.status_code != 2
    # A status the caller caused is recorded, not counted as the server's failure.
    got = _one(spans, service="talon-grpc", name="talon.v1.Namespaces/GetNamespace")
    assert got.attributes["rpc.grpc.status_code"] == 5 and got.status_code != 2
    streamed = _one(spans, service="talon-grpc", name="talon.v1.Sessions/StreamEvents")
    assert streamed.trace_id == caller and streamed.attributes["rpc.grpc.status_code"] == 5


def test_the_receiver_refuses_what_a_collector_refuses(receiver: OtlpReceiver) -> None:
    json_body = httpx.post(f"{receiver.url}/v1/traces", json={"resourceSpans": []})
    garbage = httpx.post(f"{receiver.url}/v1/traces", content=b"\xff\xff\xff",
                         headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
    elsewhere = httpx.post(f"{receiver.url}/v1/logs", content=b"",
                           headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
    assert (json_body.status_code, garbage.status_code, elsewhere.status_code) == (415, 400, 404)
    bad_metrics = httpx.post(f"{receiver.url}/v1/metrics", content=b"\xff\xff",
                             headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
    assert bad_metrics.status_code == 400
    assert receiver.spans == [] and receiver.points == {}
    receiver.refused.clear()


@pytest.mark.fast
@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "gcp_trace"}, ["gcp_trace"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_telemetry_is_exported_only_when_an_exporter_is_asked_for(
    environ: dict[str, str], names: list[str]
) -> None:
    assert exporter_names(environ) == names
    # Metrics read the same rules from their own variables.
    as_metrics = {k.replace("TRACES", "METRICS").replace("gcp_trace", "gcp_monitoring"): v.replace(
        "gcp_trace", "gcp_monitoring") for k, v in environ.items()}  # fmt: skip
    expected = [n.replace("gcp_trace", "gcp_monitoring") for n in names]
    assert exporter_names(as_metrics, signal="metrics") == expected
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp"}, signal="metrics") == []


@pytest.mark.fast
def test_log_lines_carry_the_ids_cloud_logging_correlates_by(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With an SDK tracer (this test's own provider, not the process's global one)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-project")
    record = logging.LogRecord("talon.test", logging.INFO, __file__, 1, "hello", None, None)
    assert TRACE_FIELD not in json.loads(JsonFormatter().format(record))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        line = json.loads(JsonFormatter().format(record))
        context = span.get_span_context()
    assert line[TRACE_FIELD] == f"projects/demo-project/traces/{context.trace_id:032x}"
    assert line[SPAN_FIELD] == f"{context.span_id:016x}"
    assert line[SAMPLED_FIELD] is True
    assert trace.get_current_span().get_span_context().is_valid is False
