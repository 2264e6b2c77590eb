"""The gRPC surface over a real port with a real client: every talon.v1 service, auth and
namespace isolation, error details, stream resume, and turns seen across gRPC and SSE."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

import samples
from conftest import ADMIN_TOKEN, Api, read_stream
from talon.actions.stream_slots import StreamSlots
from talon.config import Settings
from talon.grpc.calls import Calls
from talon.grpc.gen import (
    agent_templates_pb2,
    agent_templates_pb2_grpc,
    agents_pb2,
    agents_pb2_grpc,
    apply_pb2,
    apply_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    mcp_bindings_pb2,
    mcp_bindings_pb2_grpc,
    mcp_servers_pb2,
    mcp_servers_pb2_grpc,
    namespaces_pb2,
    namespaces_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
)
from talon.grpc.server import PortTaken, build_server
from talon.grpc.sessions import SessionsServicer
from talon.services import Services

NS = "team"
# kind -> (pb2, pb2_grpc, service, singular, message, request field, list field)
KINDS = {
    "MCPServer": (mcp_servers_pb2, mcp_servers_pb2_grpc, "MCPServers", "MCPServer", "MCPServer",
                  "mcp_server", "mcp_servers"),
    "Knowledge": (knowledge_pb2, knowledge_pb2_grpc, "Knowledge", "Knowledge", "KnowledgeBase",
                  "knowledge", "knowledge"),
    "AgentTemplate": (agent_templates_pb2, agent_templates_pb2_grpc, "AgentTemplates",
                      "AgentTemplate", "AgentTemplate", "agent_template", "agent_templates"),
    "Agent": (agents_pb2, agents_pb2_grpc, "Agents", "Agent", "Agent", "agent", "agents"),
    "MCPBinding": (mcp_bindings_pb2, mcp_bindings_pb2_grpc, "MCPBindings", "MCPBinding",
                   "MCPBinding", "mcp_binding", "mcp_bindings"),
    "Schedule": (schedules_pb2, schedules_pb2_grpc, "Schedules", "Schedule", "Schedule",
                 "schedule", "schedules"),
}  # fmt: skip
PLURALS = {kind: plural for plural, (kind, _, _) in samples.NAMESPACED.items()}


class Grpc:
    """A channel to the server plus a token; `stub(module, service)` and `call` keep tests short."""

    def __init__(self, port: int, token: str | None) -> None:
        self.port = port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def stub(self, module: Any, service: str) -> Any:
        return getattr(module, f"{service}Stub")(self.channel)

    def call(self, stub: Any, method: str, request: Any, **kwargs: Any) -> Any:
        return getattr(stub, method)(request, metadata=self.metadata, timeout=30, **kwargs)

    def as_token(self, token: str | None) -> Grpc:
        return Grpc(self.port, token)

    def sessions(self) -> Any:
        return self.stub(sessions_pb2_grpc, "Sessions")


@pytest.fixture
def grpc_port(api: Api, settings: Settings) -> Iterator[int]:
    """The gRPC server on a free port, on this test's database (beside the HTTP gateway)."""
    services = Services.start(settings)
    server, port = build_server(services, "127.0.0.1:0")
    server.start()
    yield port
    server.stop(0).wait()
    services.close()


@pytest.fixture
def rpc(grpc_port: int) -> Iterator[Grpc]:
    client = Grpc(grpc_port, ADMIN_TOKEN)
    yield client
    client.channel.close()


def failure(call: Any) -> tuple[grpc.StatusCode, str, list[Any]]:
    """Run `call`, which must fail: its code, message and unpacked google.rpc details."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    status = rpc_status.from_call(error)
    details = []
    for packed in status.details if status is not None else []:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest,
                     error_details_pb2.PreconditionFailure):  # fmt: skip
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                details.append(detail)
    return error.code(), error.details(), details


def violations(details: list[Any]) -> list[tuple[str, str]]:
    for detail in details:
        if isinstance(detail, error_details_pb2.BadRequest):
            return [(v.field, v.description) for v in detail.field_violations]
    return []


def as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def create(rpc: Grpc, manifest: dict[str, Any], ns: str = NS) -> Any:
    pb2, pb2_grpc, service, singular, message, field, _ = KINDS[manifest["kind"]]
    resource = json_format.ParseDict(manifest, getattr(pb2, message)())
    request = getattr(pb2, f"Create{singular}Request")(namespace=ns, **{field: resource})
    return rpc.call(rpc.stub(pb2_grpc, service), f"Create{singular}", request)


def create_namespace(rpc: Grpc, name: str) -> Any:
    namespace = json_format.ParseDict(samples.namespace(name), namespaces_pb2.Namespace())
    return rpc.call(rpc.stub(namespaces_pb2_grpc, "Namespaces"), "CreateNamespace",
                    namespaces_pb2.CreateNamespaceRequest(namespace=namespace))  # fmt: skip


def same_manifest(from_grpc: dict[str, Any], from_http: dict[str, Any]) -> None:
    """A message read over gRPC is the HTTP API's manifest (int64 travels as a string)."""
    from_grpc = dict(from_grpc, metadata=dict(from_grpc["metadata"]))
    from_grpc["metadata"]["generation"] = int(from_grpc["metadata"]["generation"])
    for key in ("labels", "annotations"):
        from_grpc["metadata"].setdefault(key, {})
    assert from_grpc == from_http


# --- resources -------------------------------------------------------------------------------


def test_every_resource_service_lists_gets_creates_updates_and_deletes(rpc: Grpc, api: Api) -> None:
    create_namespace(rpc, NS)
    for manifest in samples.full_set(NS):
        created = create(rpc, manifest)
        assert created.metadata.namespace == NS and created.metadata.resource_version
    for manifest in samples.full_set(NS):
        pb2, pb2_grpc, service, singular, _, field, list_field = KINDS[manifest["kind"]]
        stub, name = rpc.stub(pb2_grpc, service), manifest["metadata"]["name"]
        got = rpc.call(stub, f"Get{singular}",
                       getattr(pb2, f"Get{singular}Request")(namespace=NS, name=name))  # fmt: skip
        http = api.ok("GET", f"/v1/ns/{NS}/{PLURALS[manifest['kind']]}/{name}")
        same_manifest(as_dict(got), http)
        listed = rpc.call(stub, f"List{service}",
                          getattr(pb2, f"List{service}Request")(namespace=NS))  # fmt: skip
        assert [r.metadata.name for r in getattr(listed, list_field)] == [name]
        assert listed.next_page_token == ""
        # Update replaces, with the version read (optimistic concurrency as PUT).
        changed = getattr(pb2, f"Update{singular}Request")(namespace=NS)
        getattr(changed, field).CopyFrom(got)
        getattr(changed, field).metadata.labels["touched"] = "yes"
        updated = rpc.call(stub, f"Update{singular}", changed)
        assert updated.metadata.labels["touched"] == "yes"
        assert int(updated.metadata.resource_version) > int(got.metadata.resource_version)
        assert api.ok("GET", f"/v1/ns/{NS}/{PLURALS[manifest['kind']]}/{name}")["metadata"][
            "labels"]["touched"] == "yes"  # fmt: skip
    for manifest in reversed(samples.full_set(NS)):
        pb2, pb2_grpc, service, singular, *_ = KINDS[manifest["kind"]]
        name = manifest["metadata"]["name"]
        request = getattr(pb2, f"Delete{singular}Request")(namespace=NS, name=name)
        deleted = rpc.call(rpc.stub(pb2_grpc, service), f"Delete{singular}", request)
        assert deleted.metadata.name == name
        assert api.get(f"/v1/ns/{NS}/{PLURALS[manifest['kind']]}/{name}").status_code == 404


def test_namespaces_paginate_and_delete(rpc: Grpc) -> None:
    stub = rpc.stub(namespaces_pb2_grpc, "Namespaces")
    for name in ("n1", "n2", "n3"):
        create_namespace(rpc, name)
    first = rpc.call(stub, "ListNamespaces", namespaces_pb2.ListNamespacesRequest(page_size=2))
    assert [n.metadata.name for n in first.namespaces] == ["n1", "n2"] and first.next_page_token
    rest = rpc.call(stub, "ListNamespaces", namespaces_pb2.ListNamespacesRequest(
        page_size=2, page_token=first.next_page_token))  # fmt: skip
    assert [n.metadata.name for n in rest.namespaces] == ["n3"] and rest.next_page_token == ""
    got = rpc.call(stub, "GetNamespace", namespaces_pb2.GetNamespaceRequest(name="n2"))
    assert got.kind == "Namespace" and got.metadata.namespace == ""
    rpc.call(stub, "DeleteNamespace", namespaces_pb2.DeleteNamespaceRequest(name="n2"))
    code, _, _ = failure(
        lambda: rpc.call(stub, "GetNamespace", namespaces_pb2.GetNamespaceRequest(name="n2"))
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_apply_and_schedule_actions(rpc: Grpc, api: Api) -> None:
    stub = rpc.stub(apply_pb2_grpc, "Apply")
    items = [samples.namespace(NS), *samples.full_set(NS)]
    manifests = [json_format.ParseDict(item, struct_pb2.Struct()) for item in items]
    dry = rpc.call(stub, "Apply", apply_pb2.ApplyRequest(manifests=manifests, dry_run=True))
    assert dry.dry_run and [i.action for i in dry.items] == ["created"] * len(items)
    assert api.get(f"/v1/namespaces/{NS}").status_code == 404
    done = rpc.call(stub, "Apply", apply_pb2.ApplyRequest(manifests=manifests))
    assert [(i.kind, i.name) for i in done.items] == [
        (m["kind"], m["metadata"]["name"]) for m in items]  # fmt: skip
    again = rpc.call(stub, "Apply", apply_pb2.ApplyRequest(manifests=manifests))
    assert {i.action for i in again.items} == {"unchanged"}
    assert api.ok("GET", f"/v1/ns/{NS}/agents/bot")["metadata"]["name"] == "bot"

    schedules = rpc.stub(schedules_pb2_grpc, "Schedules")
    fired = rpc.call(schedules, "RunSchedule", schedules_pb2.RunScheduleRequest(
        namespace=NS, name="wake"))  # fmt: skip
    assert as_dict(fired.fire)
    fires = rpc.call(schedules, "ListScheduleFires", schedules_pb2.ListScheduleFiresRequest(
        namespace=NS, name="wake"))  # fmt: skip
    http = api.ok("GET", f"/v1/ns/{NS}/schedules/wake/fires")
    assert fires.next_fire_at == http["nextFireAt"]
    assert [as_dict(f) for f in fires.fires] == http["items"] and len(http["items"]) == 1


# --- errors ---------------------------------------------------------------------------------


def test_errors_are_statuses_with_details_naming_the_field(rpc: Grpc) -> None:
    create_namespace(rpc, NS)
    for manifest in samples.full_set(NS)[:3]:
        create(rpc, manifest)
    bad = samples.agent(NS)
    bad["spec"]["templateRef"] = 7
    code, message, details = failure(lambda: create(rpc, bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.templateRef" in message
    assert violations(details)[0][0] == "agent.spec.templateRef"
    assert details[0].reason == "INVALID" and details[0].domain == "talon.dev"

    code, _, details = failure(lambda: create(rpc, samples.agent(NS), ns=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details) == [("namespace", "required")]

    code, _, details = failure(lambda: create(rpc, samples.agent(NS), ns="elsewhere"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details)[0][0] == "agent.metadata.namespace"

    agent = create(rpc, samples.agent(NS))
    code, _, _ = failure(lambda: create(rpc, samples.agent(NS)))
    assert code == grpc.StatusCode.ALREADY_EXISTS

    stale = agents_pb2.UpdateAgentRequest(namespace=NS, agent=agent)
    stale.agent.metadata.labels["a"] = "1"
    rpc.call(rpc.stub(agents_pb2_grpc, "Agents"), "UpdateAgent", stale)
    code, _, details = failure(
        lambda: rpc.call(rpc.stub(agents_pb2_grpc, "Agents"), "UpdateAgent", stale)
    )
    assert code == grpc.StatusCode.ABORTED
    precondition = details[1]
    assert isinstance(precondition, error_details_pb2.PreconditionFailure)
    assert precondition.violations[0].subject == "agent.metadata.resource_version"

    templates = rpc.stub(agent_templates_pb2_grpc, "AgentTemplates")
    code, _, details = failure(lambda: rpc.call(
        templates, "DeleteAgentTemplate",
        agent_templates_pb2.DeleteAgentTemplateRequest(namespace=NS, name="support")))  # fmt: skip
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(details[1], error_details_pb2.PreconditionFailure)

    sessions = rpc.sessions()
    blank = sessions_pb2.PostMessageRequest(namespace=NS, agent="bot", session_id="s", content=" ")
    rpc.call(sessions, "CreateSession", sessions_pb2.CreateSessionRequest(
        namespace=NS, agent="bot", session_id="s"))  # fmt: skip
    code, _, details = failure(lambda: rpc.call(sessions, "PostMessage", blank))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details) == [("content", "must not be blank")]
    bad_id = sessions_pb2.CreateSessionRequest(namespace=NS, agent="bot", session_id="Bad Id")
    code, _, details = failure(lambda: rpc.call(sessions, "CreateSession", bad_id))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details)[0][0] == "session_id"
    code, _, details = failure(lambda: rpc.call(
        sessions, "ListMessages", sessions_pb2.ListMessagesRequest(
            namespace=NS, agent="bot", session_id="s", page_token="x")))  # fmt: skip
    assert violations(details)[0][0] == "page_token"


# --- auth and isolation ---------------------------------------------------------------------


def test_auth_roles_and_namespace_isolation(rpc: Grpc, api: Api) -> None:
    for ns in ("blue", "red"):
        create_namespace(rpc, ns)
        for manifest in samples.full_set(ns)[:4]:
            create(rpc, manifest, ns)
    agents = lambda client: client.stub(agents_pb2_grpc, "Agents")  # noqa: E731
    get_bot = lambda client, ns: client.call(  # noqa: E731
        agents(client), "GetAgent", agents_pb2.GetAgentRequest(namespace=ns, name="bot")
    )

    for token in (None, "tln_not-a-token"):
        code, _, details = failure(lambda token=token: get_bot(rpc.as_token(token), "blue"))
        assert code == grpc.StatusCode.UNAUTHENTICATED and details[0].reason == "UNAUTHENTICATED"
    wrong_scheme = rpc.as_token(None)
    wrong_scheme.metadata = (("authorization", f"Basic {ADMIN_TOKEN}"),)
    assert failure(lambda: get_bot(wrong_scheme, "blue"))[0] == grpc.StatusCode.UNAUTHENTICATED

    blue_reader = rpc.as_token(api.token("read", ["blue"]))
    blue_writer = rpc.as_token(api.token("write", ["blue"]))
    assert get_bot(blue_reader, "blue").metadata.namespace == "blue"
    # Another namespace reads exactly like a missing one, whatever the call.
    hidden = failure(lambda: get_bot(blue_reader, "red"))
    missing = failure(lambda: get_bot(rpc, "nowhere"))
    assert hidden[0] == missing[0] == grpc.StatusCode.NOT_FOUND
    assert (
        hidden[1] == "namespace 'red' not found" and missing[1] == "namespace 'nowhere' not found"
    )
    sessions = blue_writer.sessions()
    for method, request in (
        ("ListAgents", agents_pb2.ListAgentsRequest(namespace="red")),
        ("DeleteAgent", agents_pb2.DeleteAgentRequest(namespace="red", name="bot")),
    ):
        code, message, _ = failure(lambda m=method, r=request: blue_writer.call(
            agents(blue_writer), m, r))  # fmt: skip
        assert (code, message) == (grpc.StatusCode.NOT_FOUND, "namespace 'red' not found")
    for method, request in (
        ("CreateSession", sessions_pb2.CreateSessionRequest(namespace="red", agent="bot")),
        ("ListSessions", sessions_pb2.ListSessionsRequest(namespace="red", agent="bot")),
        (
            "PostMessage",
            sessions_pb2.PostMessageRequest(
                namespace="red", agent="bot", session_id="x", content="hi"
            ),
        ),
    ):
        code, message, _ = failure(lambda m=method, r=request: blue_writer.call(sessions, m, r))
        assert (code, message) == (grpc.StatusCode.NOT_FOUND, "namespace 'red' not found")
    stream = blue_writer.call(sessions, "StreamEvents", sessions_pb2.StreamEventsRequest(
        namespace="red", agent="bot", session_id="x", after_event_id=0))  # fmt: skip
    code, message, _ = failure(lambda: list(stream))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "namespace 'red' not found")
    # Lists across namespaces show only the token's.
    listed = blue_reader.call(blue_reader.stub(namespaces_pb2_grpc, "Namespaces"),
                              "ListNamespaces", namespaces_pb2.ListNamespacesRequest())  # fmt: skip
    assert [n.metadata.name for n in listed.namespaces] == ["blue"]
    # Apply into a hidden namespace: not found, naming the manifest's field.
    manifest = json_format.ParseDict(samples.agent("red", "intruder"),
                                     struct_pb2.Struct())  # fmt: skip
    code, _, details = failure(lambda: blue_writer.call(
        blue_writer.stub(apply_pb2_grpc, "Apply"), "Apply",
        apply_pb2.ApplyRequest(manifests=[manifest])))  # fmt: skip
    assert code == grpc.StatusCode.NOT_FOUND
    assert details[0].metadata["field"] == "manifests[0].metadata.namespace"
    assert api.get("/v1/ns/red/agents/intruder").status_code == 404
    # Roles: a reader cannot write, a writer cannot create namespaces.
    code, _, _ = failure(lambda: create(blue_reader, samples.agent("blue", "other"), "blue"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _, _ = failure(lambda: create_namespace(blue_writer, "blue"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    scoped_admin = rpc.as_token(api.token("admin", ["blue"]))
    code, _, details = failure(lambda: create_namespace(scoped_admin, "green"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details[0].metadata["field"] == "namespace.metadata.name"


# --- sessions -------------------------------------------------------------------------------


@pytest.fixture
def team_bot(rpc: Grpc, api: Api) -> Grpc:
    items = [samples.namespace(NS), samples.template(NS), samples.agent(NS)]
    api.ok("POST", "/v1/apply", json={"items": items})
    return rpc


def _post(rpc: Grpc, session: str, content: str, **extra: Any) -> Any:
    return rpc.call(rpc.sessions(), "PostMessage", sessions_pb2.PostMessageRequest(
        namespace=NS, agent="bot", session_id=session, content=content, **extra))  # fmt: skip


def _stream(rpc: Grpc, session: str, after: int | None, *, limit: int | None = None,
            until_turn_end: bool = True, stop_at: str = "") -> list[dict[str, Any]]:  # fmt: skip
    request = sessions_pb2.StreamEventsRequest(
        namespace=NS, agent="bot", session_id=session, until_turn_end=until_turn_end
    )
    if after is not None:
        request.after_event_id = after
    call = rpc.call(rpc.sessions(), "StreamEvents", request)
    events = []
    for event in call:
        events.append(json_format.MessageToDict(event, preserving_proto_field_name=False))
        if (limit is not None and len(events) >= limit) or event.type == stop_at:
            call.cancel()
            break
    for event in events:
        event["id"] = int(event["id"])
        event.setdefault("turnId", None)
        event.setdefault("data", {})
    return events


def _wait_idle(rpc: Grpc, session: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = rpc.call(rpc.sessions(), "GetSession", sessions_pb2.GetSessionRequest(
            namespace=NS, agent="bot", session_id=session))  # fmt: skip
        if not view.HasField("active_turn"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"session {session} still busy")


def test_sessions_over_grpc(team_bot: Grpc, api: Api, start_worker: Any) -> None:
    rpc, sessions = team_bot, team_bot.sessions()
    metadata = json_format.ParseDict({"owner": "ops", "n": 3}, struct_pb2.Struct())
    created = rpc.call(sessions, "CreateSession", sessions_pb2.CreateSessionRequest(
        namespace=NS, agent="bot", session_id="s1", metadata=metadata))  # fmt: skip
    assert created.created and created.session.namespace == NS
    again = rpc.call(sessions, "CreateSession", sessions_pb2.CreateSessionRequest(
        namespace=NS, agent="bot", session_id="s1"))  # fmt: skip
    assert not again.created and again.session.created_at == created.session.created_at
    assert api.ok("GET", f"/v1/ns/{NS}/agents/bot/sessions/s1")["metadata"] == {
        "owner": "ops", "n": 3}  # fmt: skip

    first = _post(rpc, "s1", "hello", idempotency_key="k-1")
    replay = _post(rpc, "s1", "hello", idempotency_key="k-1")
    assert replay.replayed and not first.replayed and replay.turn_id == first.turn_id
    code, _, details = failure(lambda: _post(rpc, "s1", "other", idempotency_key="k-1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details[1].field_violations[0].field == "idempotency_key"  # not the HTTP header
    start_worker()
    _post(rpc, "s1", "second")
    view = _wait_idle(rpc, "s1")
    assert sorted(m.role for m in view.messages) == ["assistant", "assistant", "user", "user"]
    assert view.stream and view.message_count == 4

    page = rpc.call(sessions, "ListMessages", sessions_pb2.ListMessagesRequest(
        namespace=NS, agent="bot", session_id="s1", page_size=3))  # fmt: skip
    rest = rpc.call(sessions, "ListMessages", sessions_pb2.ListMessagesRequest(
        namespace=NS, agent="bot", session_id="s1", page_token=page.next_page_token))  # fmt: skip
    assert [m.seq for m in page.messages] == [1, 2, 3] and [m.seq for m in rest.messages] == [4]
    http_messages = api.ok("GET", f"/v1/ns/{NS}/agents/bot/sessions/s1/messages")["items"]
    assert [m.content for m in (*page.messages, *rest.messages)] == [
        m["content"] for m in http_messages]  # fmt: skip

    turn = rpc.call(sessions, "GetTurn", sessions_pb2.GetTurnRequest(
        namespace=NS, agent="bot", session_id="s1", turn_id=first.turn_id))  # fmt: skip
    assert turn.state == "completed" and turn.steps

    # REJECT while a turn is open: FAILED_PRECONDITION; then cancel the open turns.
    rpc.call(sessions, "CreateSession", sessions_pb2.CreateSessionRequest(
        namespace=NS, agent="bot", session_id="s2"))  # fmt: skip
    listed = rpc.call(sessions, "ListSessions", sessions_pb2.ListSessionsRequest(
        namespace=NS, agent="bot", page_size=1))  # fmt: skip
    assert [s.id for s in listed.sessions] == ["s1"] and listed.next_page_token == "s1"
    deleted = rpc.call(sessions, "DeleteSession", sessions_pb2.DeleteSessionRequest(
        namespace=NS, agent="bot", session_id="s2"))  # fmt: skip
    assert deleted.id == "s2"
    assert api.get(f"/v1/ns/{NS}/agents/bot/sessions/s2").status_code == 404


def test_multitask_reject_and_cancel(team_bot: Grpc) -> None:
    rpc, sessions = team_bot, team_bot.sessions()
    rpc.call(sessions, "CreateSession", sessions_pb2.CreateSessionRequest(
        namespace=NS, agent="bot", session_id="busy"))  # fmt: skip
    queued = _post(rpc, "busy", "one")  # no worker: it stays queued
    code, _, _ = failure(lambda: _post(rpc, "busy", "two", multitask_strategy=sessions_pb2.REJECT))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    cancelled = rpc.call(sessions, "CancelTurns", sessions_pb2.CancelTurnsRequest(
        namespace=NS, agent="bot", session_id="busy"))  # fmt: skip
    assert list(cancelled.cancelled) == [queued.turn_id]
    events = _stream(rpc, "busy", 0)
    assert [e["type"] for e in events][-1] == "turn.cancelled"


def test_stream_resumes_with_nothing_lost_or_repeated(
    team_bot: Grpc, api: Api, start_worker: Any
) -> None:
    rpc = team_bot
    rpc.call(rpc.sessions(), "CreateSession", sessions_pb2.CreateSessionRequest(
        namespace=NS, agent="bot", session_id="s1"))  # fmt: skip
    start_worker()
    for i in range(3):
        _post(rpc, "s1", f"m{i}")
    _wait_idle(rpc, "s1")
    everything = _stream(rpc, "s1", 0)
    assert [e["id"] for e in everything] == list(range(1, len(everything) + 1))
    assert len(everything) > 8
    # Drop the stream every 4 events and resume from the last id received.
    collected: list[dict[str, Any]] = []
    last = 0
    while True:
        chunk = _stream(rpc, "s1", last, limit=4)
        if not chunk:
            break
        collected += chunk
        last = chunk[-1]["id"]
    assert collected == everything
    # The same events as the SSE stream, field for field.
    sse = read_stream(api, f"/v1/ns/{NS}/agents/bot/sessions/s1/stream",
                      params={"lastEventId": 0, "untilTurnEnd": "true"})  # fmt: skip
    assert everything == sse


def test_a_turn_posted_over_grpc_is_seen_over_sse_and_back(
    team_bot: Grpc, api: Api, start_worker: Any
) -> None:
    rpc = team_bot
    base = f"/v1/ns/{NS}/agents/bot/sessions/x"
    api.ok("POST", f"/v1/ns/{NS}/agents/bot/sessions", 201, json={"id": "x"})
    start_worker()
    # gRPC -> SSE: the turn posted over gRPC, followed over SSE to its end.
    accepted = _post(rpc, "x", "over grpc")
    seen = read_stream(api, f"{base}/stream", params={"untilTurnEnd": "true", "lastEventId": 0})
    assert seen and seen[-1]["type"] == "turn.completed"
    assert seen[-1]["turnId"] == accepted.turn_id
    # SSE's client -> gRPC: a gRPC stream opened before the HTTP post sees that turn live.
    got: list[dict[str, Any]] = []
    last = seen[-1]["id"]
    follower = threading.Thread(target=lambda: got.extend(
        _stream(rpc, "x", last, until_turn_end=False, stop_at="turn.completed")))  # fmt: skip
    follower.start()
    time.sleep(0.5)  # the stream is open, waiting for new events
    posted = api.ok("POST", f"{base}/message", 202, json={"content": "over http"})
    follower.join(30)
    assert got and got[0]["id"] == last + 1 and got[-1]["type"] == "turn.completed"
    assert {e["turnId"] for e in got} == {posted["turnId"]}


def test_a_message_posted_and_streamed_in_one_call(
    team_bot: Grpc, api: Api, start_worker: Any
) -> None:
    """PostMessageAndStream: the turn's events from its first to its end, what PostMessage
    answers as initial metadata, the same events as the SSE stream; a retry with the key
    replays them; its errors name the request's fields; a read token is refused."""
    rpc, sessions = team_bot, team_bot.sessions()
    rpc.call(sessions, "CreateSession", sessions_pb2.CreateSessionRequest(
        namespace=NS, agent="bot", session_id="s1"))  # fmt: skip
    start_worker()

    def post_and_stream(content: str, key: str = "", rpc: Grpc = rpc) -> tuple[dict, list]:
        request = sessions_pb2.PostMessageAndStreamRequest(
            message=sessions_pb2.PostMessageRequest(
                namespace=NS, agent="bot", session_id="s1", content=content, idempotency_key=key
            )
        )
        call = rpc.call(rpc.sessions(), "PostMessageAndStream", request)
        events = [json_format.MessageToDict(e) for e in call]
        return dict(call.initial_metadata()), events

    metadata, events = post_and_stream("hello", "k-1")
    turn, start = metadata["talon-turn-id"], int(metadata["talon-stream-from"])
    assert metadata["talon-replayed"] == "false" and metadata["talon-message-seq"] == "1"
    assert [int(e["id"]) for e in events] == list(range(start + 1, start + 1 + len(events)))
    assert events[0]["type"] == "message.created" and events[-1]["type"] == "turn.completed"
    assert {e["turnId"] for e in events} == {turn}
    sse = read_stream(api, f"/v1/ns/{NS}/agents/bot/sessions/s1/stream",
                      params={"lastEventId": start, "untilTurnEnd": "true"})  # fmt: skip
    assert [(int(e["id"]), e["type"]) for e in events] == [(e["id"], e["type"]) for e in sse]
    again, replayed = post_and_stream("hello", "k-1")
    assert again["talon-replayed"] == "true" and again["talon-turn-id"] == turn
    assert replayed == events
    code, _, details = failure(lambda: post_and_stream("another body", "k-1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details[1].field_violations[0].field == "message.idempotency_key"

    code, _, details = failure(lambda: post_and_stream(""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "message.content" in str(details)
    code, _, details = failure(lambda: post_and_stream("hi", "bad\nkey"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "message.idempotency_key" in str(details)
    reader = rpc.as_token(api.token("read", [NS]))
    code, _, _ = failure(lambda: post_and_stream("hi", rpc=reader))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert api.ok("GET", f"/v1/ns/{NS}/agents/bot/sessions/s1")["messageCount"] == 2


class _CancelledCall:
    """A call's context whose client cancelled while its message was being posted: grpc
    refuses the initial metadata then."""

    def invocation_metadata(self) -> Any:
        return (("authorization", f"Bearer {ADMIN_TOKEN}"),)

    def send_initial_metadata(self, metadata: Any) -> None:
        raise grpc.RpcError("the call was cancelled")

    def is_active(self) -> bool:
        return False


def test_a_call_cancelled_while_its_message_is_posted_leaves_nothing_subscribed(
    team_bot: Grpc, api: Api, settings: Settings
) -> None:
    services = Services.start(settings)
    try:
        servicer = SessionsServicer(Calls(services), StreamSlots(4, 4))
        listener = services.listener()
        baseline = listener.subscribers()
        request = sessions_pb2.PostMessageAndStreamRequest(message=sessions_pb2.PostMessageRequest(
            namespace=NS, agent="bot", session_id="s1", content="gone"))  # fmt: skip
        api.ok("POST", f"/v1/ns/{NS}/agents/bot/sessions", 201, json={"id": "s1"})
        context: Any = _CancelledCall()
        assert list(servicer.PostMessageAndStream(request, context)) == []
        assert api.ok("GET", f"/v1/ns/{NS}/agents/bot/sessions/s1")["messageCount"] == 1
        assert listener.subscribers() == baseline  # its inbox closed, not left to the listener
        assert servicer.streams.used == 0
    finally:
        services.close()


# --- the server itself ----------------------------------------------------------------------


def test_health_and_reflection(rpc: Grpc) -> None:
    health = health_pb2_grpc.HealthStub(rpc.channel)
    for service in ("", "talon.v1.Sessions", "talon.v1.Agents"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(rpc.channel)
    replies = list(stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="talon.v1.Sessions"),
    ]), timeout=10))  # fmt: skip
    names = {s.name for s in replies[0].list_services_response.service}
    assert {f"talon.v1.{n}" for n in ("Namespaces", "AgentTemplates", "Agents", "Sessions",
            "Schedules", "Knowledge", "MCPServers", "MCPBindings", "Apply")} <= names  # fmt: skip
    assert "grpc.health.v1.Health" in names
    assert replies[1].file_descriptor_response.file_descriptor_proto


def test_a_taken_port_is_refused(settings: Settings, grpc_port: int) -> None:
    services = Services.start(settings)
    try:
        with pytest.raises(PortTaken, match=str(grpc_port)):
            build_server(services, f"127.0.0.1:{grpc_port}")
    finally:
        services.close()


def test_what_the_database_cannot_store_is_refused_naming_the_field(rpc: Grpc) -> None:
    """The HTTP API's body rules (talon.json_values) hold for gRPC messages too: NUL
    characters and non-finite numbers anywhere are INVALID_ARGUMENT, never INTERNAL."""
    create_namespace(rpc, NS)
    agents, sessions = rpc.stub(agents_pb2_grpc, "Agents"), rpc.sessions()
    get = agents_pb2.GetAgentRequest(namespace="te\x00am", name="bot")
    code, _, details = failure(lambda: rpc.call(agents, "GetAgent", get))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details) == [("namespace", "NUL characters (U+0000) are not accepted")]
    agent = json_format.ParseDict(samples.agent(NS), agents_pb2.Agent())
    agent.spec.update({"ratio": float("nan")})
    create = agents_pb2.CreateAgentRequest(namespace=NS, agent=agent)
    code, _, details = failure(lambda: rpc.call(agents, "CreateAgent", create))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details)[0][0] == "agent.spec.ratio"
    metadata = struct_pb2.Struct()
    metadata.update({"k\x00": "v"})
    session = sessions_pb2.CreateSessionRequest(namespace=NS, agent="bot", metadata=metadata)
    code, _, details = failure(lambda: rpc.call(sessions, "CreateSession", session))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details)[0][0] == "metadata.k\\u0000"
    stream = rpc.call(sessions, "StreamEvents", sessions_pb2.StreamEventsRequest(
        namespace=NS, agent="bot", session_id="s\x00"))  # fmt: skip
    code, _, details = failure(lambda: list(stream))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details)[0][0] == "session_id"


# --- the isolation matrix -------------------------------------------------------------------

SAMPLE_NAMES = {"MCPServer": "tools", "Knowledge": "faq", "AgentTemplate": "support",
                "Agent": "bot", "MCPBinding": "bind", "Schedule": "wake"}  # fmt: skip
SAMPLE_BODIES = {"MCPServer": samples.mcp_server, "Knowledge": samples.knowledge,
                 "AgentTemplate": samples.template, "Agent": samples.agent,
                 "MCPBinding": samples.binding, "Schedule": samples.schedule}  # fmt: skip


SCALARS = {"agent": "bot", "session_id": "s1", "content": "hello",
           "turn_id": "00000000-0000-0000-0000-000000000000"}  # fmt: skip


def _isolation_calls(ns: str) -> list[tuple[Any, str, Any]]:
    """Every talon.v1 method that names a namespace, filled in for `ns` (stub class, method,
    request): read from the services' descriptors, so a new method is in the matrix."""
    modules = [(*KINDS[kind][:2], kind) for kind in KINDS]
    modules += [(namespaces_pb2, namespaces_pb2_grpc, "Namespace"),
                (sessions_pb2, sessions_pb2_grpc, "")]  # fmt: skip
    bodies = {**SAMPLE_BODIES, "Namespace": samples.namespace}
    calls = []
    for pb2, pb2_grpc, kind in modules:
        for service in pb2.DESCRIPTOR.services_by_name.values():
            stub = getattr(pb2_grpc, f"{service.name}Stub")
            for method in service.methods:
                fields = method.input_type.fields_by_name
                if method.name in ("ListNamespaces", "CreateNamespace"):
                    continue  # they name no namespace: see the auth test
                request = getattr(pb2, method.input_type.name)()
                scalars = {**SCALARS, "name": ns if kind == "Namespace" else SAMPLE_NAMES.get(kind),
                           "namespace": ns}  # fmt: skip
                for field in fields.values():
                    if field.message_type is None and field.name in scalars:
                        setattr(request, field.name, scalars[field.name])
                    elif field.message_type is not None and field.message_type.name.endswith(
                            "Request"):  # a call's request inside another's  # fmt: skip
                        inner = getattr(request, field.name)
                        for name in field.message_type.fields_by_name:
                            if name in scalars:
                                setattr(inner, name, scalars[name])
                    elif field.message_type is not None and kind in bodies and (
                            field.message_type.name == KINDS.get(kind, ("",) * 5)[4]
                            or field.message_type.name == "Namespace"):  # fmt: skip
                        getattr(request, field.name).CopyFrom(json_format.ParseDict(
                            bodies[kind](ns), getattr(pb2, field.message_type.name)()))  # fmt: skip
                calls.append((stub, method.name, request))
    return calls


def _call(client: Grpc, stub: Any, method: str, request: Any) -> Any:
    reply = client.call(stub(client.channel), method, request)
    return list(reply) if method in ("StreamEvents", "PostMessageAndStream") else reply


def test_isolation_matrix_a_token_of_ns_a_never_sees_ns_b(rpc: Grpc, api: Api) -> None:
    for ns in ("blue", "red"):
        items = [samples.namespace(ns), *samples.full_set(ns)]
        api.ok("POST", "/v1/apply", json={"items": items})
        api.ok("POST", f"/v1/ns/{ns}/agents/bot/sessions", 201, json={"id": "s1"})
    scoped = rpc.as_token(api.token("admin", ["blue"]))
    calls = _isolation_calls("red")
    # six kinds x five methods, two schedule actions, ten session methods, three namespace ones
    assert len(calls) == 6 * 5 + 2 + 10 + 3
    for stub, method, request in calls:
        code, message, _ = failure(lambda s=stub, m=method, r=request: _call(scoped, s, m, r))
        assert (code, message) == (grpc.StatusCode.NOT_FOUND, "namespace 'red' not found"), method
    # Indistinguishable from a namespace that does not exist at all, even for an admin.
    for stub, method, request in _isolation_calls("ghost"):
        code, message, _ = failure(lambda s=stub, m=method, r=request: _call(rpc, s, m, r))
        assert (code, message) == (grpc.StatusCode.NOT_FOUND, "namespace 'ghost' not found"), (
            method)  # fmt: skip
    # Nothing in red changed, and blue's own calls work with the same token.
    assert api.ok("GET", "/v1/ns/red/agents/bot")["metadata"]["generation"] == 1
    assert api.ok("GET", "/v1/namespaces/red")["metadata"]["generation"] == 1
    assert api.ok("GET", "/v1/ns/red/agents/bot/sessions/s1")["messageCount"] == 0
    for stub, method, request in _isolation_calls("blue"):
        if method.startswith(("Get", "List")) and method != "GetTurn":  # (no such turn)
            _call(scoped, stub, method, request)


def test_tool_tokens_and_revoked_streams(team_bot: Grpc, api: Api) -> None:
    rpc = team_bot
    body = {"name": "ops-only", "role": "read", "namespaces": [NS], "tools": ["read_session"]}
    minted = api.ok("POST", "/v1/tokens", 201, json=body)
    tools = rpc.as_token(minted["token"])
    listing = agents_pb2.ListAgentsRequest(namespace=NS)
    code, message, _ = failure(
        lambda: tools.call(tools.stub(agents_pb2_grpc, "Agents"), "ListAgents", listing)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "talon-ops" in message
    # A stream open when its token is revoked ends with UNAUTHENTICATED, and sends nothing
    # committed after the revocation.
    rpc.call(rpc.sessions(), "CreateSession", sessions_pb2.CreateSessionRequest(
        namespace=NS, agent="bot", session_id="s1"))  # fmt: skip
    reader = api.ok("POST", "/v1/tokens", 201, json={
        "name": "reader", "role": "read", "namespaces": [NS]})  # fmt: skip
    client = rpc.as_token(reader["token"])
    received: list[Any] = []
    outcome: list[grpc.StatusCode] = []

    def follow() -> None:
        stream = client.call(client.sessions(), "StreamEvents", sessions_pb2.StreamEventsRequest(
            namespace=NS, agent="bot", session_id="s1"))  # fmt: skip
        try:
            received.extend(stream)
        except grpc.RpcError as exc:
            outcome.append(exc.code())  # type: ignore[attr-defined]

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.5)
    api.ok("DELETE", f"/v1/tokens/{reader['id']}")
    revoked_at = time.monotonic()
    _post(rpc, "s1", "secret plans")
    thread.join(10)
    assert not thread.is_alive() and outcome == [grpc.StatusCode.UNAUTHENTICATED]
    assert time.monotonic() - revoked_at < 3
    assert not any("secret plans" in str(event) for event in received)


def test_calls_beyond_the_threads_are_refused_not_queued(
    team_bot: Grpc, settings: Settings
) -> None:
    # Streams allowed every thread here, to fill them (by default they never may: below).
    gateway = settings.gateway.model_copy(update={"max_open_streams": 2,
                                                  "max_streams_per_token": 2})  # fmt: skip
    services = Services.start(settings.model_copy(update={"gateway": gateway}))
    server, port = build_server(services, "127.0.0.1:0", threads=2)
    server.start()
    client = Grpc(port, ADMIN_TOKEN)
    try:
        client.call(client.sessions(), "CreateSession", sessions_pb2.CreateSessionRequest(
            namespace=NS, agent="bot", session_id="s1"))  # fmt: skip
        request = sessions_pb2.StreamEventsRequest(namespace=NS, agent="bot", session_id="s1")
        streams = [client.call(client.sessions(), "StreamEvents", request) for _ in range(2)]
        time.sleep(0.5)  # both hold a thread, waiting for events
        get = sessions_pb2.GetSessionRequest(namespace=NS, agent="bot", session_id="s1")
        code, _, _ = failure(lambda: client.call(client.sessions(), "GetSession", get))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        for stream in streams:
            stream.cancel()
        # A cancelled stream ends at once (not at its next 5 s heartbeat), freeing its thread.
        deadline = time.monotonic() + 2
        while True:
            try:
                assert client.call(client.sessions(), "GetSession", get).id == "s1"
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        client.channel.close()
        server.stop(0).wait()
        services.close()


def test_open_streams_never_take_every_thread(team_bot: Grpc, settings: Settings, api: Api) -> None:
    """8 threads: streams may hold 6 (gateway.maxOpenStreams by default), 1 per token."""
    defaults = settings.gateway.model_copy(update={"max_open_streams": 0,
                                                   "max_streams_per_token": 0})  # fmt: skip
    services = Services.start(settings.model_copy(update={"gateway": defaults}))
    server, port = build_server(services, "127.0.0.1:0", threads=8)
    server.start()
    admin = Grpc(port, ADMIN_TOKEN)
    readers = [admin.as_token(api.token("read", [NS])) for _ in range(7)]
    streams: list[Any] = []
    try:
        admin.call(admin.sessions(), "CreateSession", sessions_pb2.CreateSessionRequest(
            namespace=NS, agent="bot", session_id="s1"))  # fmt: skip
        request = sessions_pb2.StreamEventsRequest(namespace=NS, agent="bot", session_id="s1")
        streams = [r.call(r.sessions(), "StreamEvents", request) for r in readers[:6]]
        time.sleep(0.5)  # all six hold a thread, waiting for events
        # The same token again: its share is taken.
        code, message, _ = failure(
            lambda: list(readers[0].call(readers[0].sessions(), "StreamEvents", request))
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maxStreamsPerToken" in message
        # Another token: every stream slot is taken.
        code, message, _ = failure(
            lambda: list(readers[6].call(readers[6].sessions(), "StreamEvents", request))
        )
        assert code == grpc.StatusCode.UNAVAILABLE and "maxOpenStreams" in message
        # A message posted with its stream takes a slot too, before it is queued.
        writer = admin.as_token(api.token("write", [NS]))
        readers.append(writer)
        posted = sessions_pb2.PostMessageAndStreamRequest(message=sessions_pb2.PostMessageRequest(
            namespace=NS, agent="bot", session_id="s1", content="refused"))  # fmt: skip
        code, message, _ = failure(
            lambda: list(writer.call(writer.sessions(), "PostMessageAndStream", posted))
        )
        assert code == grpc.StatusCode.UNAVAILABLE and "maxOpenStreams" in message
        assert api.ok("GET", f"/v1/ns/{NS}/agents/bot/sessions/s1")["messageCount"] == 0
        # Everything else is still served.
        get = sessions_pb2.GetSessionRequest(namespace=NS, agent="bot", session_id="s1")
        assert admin.call(admin.sessions(), "GetSession", get).id == "s1"
        # A cancelled stream gives its slot back.
        streams[0].cancel()
        deadline = time.monotonic() + 5
        while True:
            again = readers[6].call(readers[6].sessions(), "StreamEvents", request)
            streams.append(again)
            time.sleep(0.3)
            if again.running():
                break
            assert time.monotonic() < deadline, "the cancelled stream kept its slot"
    finally:
        for stream in streams:
            stream.cancel()
        admin.channel.close()
        for reader in readers:
            reader.channel.close()
        server.stop(0).wait()
        services.close()


def test_update_with_a_field_mask_changes_only_the_masked_paths(rpc: Grpc, api: Api) -> None:
    create_namespace(rpc, NS)
    for manifest in samples.full_set(NS)[:4]:
        create(rpc, manifest)
    agents = rpc.stub(agents_pb2_grpc, "Agents")
    api.ok("PATCH", f"/v1/ns/{NS}/agents/bot", json={"metadata": {"labels": {"tier": "gold"}}})
    before = api.ok("GET", f"/v1/ns/{NS}/agents/bot")
    # Only the name and the masked path: the rest of the stored agent stays as it is.
    partial = agents_pb2.Agent()
    partial.metadata.name = "bot"
    partial.spec.update({"features": {"customer_id": "c-42"}})
    request = agents_pb2.UpdateAgentRequest(namespace=NS, agent=partial)
    request.update_mask.paths.append("spec.features")
    updated = rpc.call(agents, "UpdateAgent", request)
    after = api.ok("GET", f"/v1/ns/{NS}/agents/bot")
    assert after["spec"]["features"] == {"customer_id": "c-42"}
    assert after["spec"]["templateRef"] == before["spec"]["templateRef"]
    assert after["metadata"]["labels"] == {"tier": "gold"}
    assert updated.metadata.resource_version == after["metadata"]["resourceVersion"]
    # A masked path the message lacks is removed; labels go as a whole map.
    request = agents_pb2.UpdateAgentRequest(namespace=NS, agent=partial)
    request.update_mask.paths.extend(["metadata.labels"])
    rpc.call(agents, "UpdateAgent", request)
    assert api.ok("GET", f"/v1/ns/{NS}/agents/bot")["metadata"]["labels"] == {}
    # A stale version with a mask is a conflict like any other; a path outside the
    # resource's writable parts is refused naming update_mask.
    partial.metadata.resource_version = before["metadata"]["resourceVersion"]
    request = agents_pb2.UpdateAgentRequest(namespace=NS, agent=partial)
    request.update_mask.paths.append("spec.features")
    assert failure(lambda: rpc.call(agents, "UpdateAgent", request))[0] == (
        grpc.StatusCode.ABORTED)  # fmt: skip
    request = agents_pb2.UpdateAgentRequest(namespace=NS, agent=partial)
    request.update_mask.paths.append("metadata.name")
    code, _, details = failure(lambda: rpc.call(agents, "UpdateAgent", request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details)[0][0] == "update_mask"
