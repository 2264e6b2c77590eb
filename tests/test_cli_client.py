"""The CLI's HTTP client and commands through httpx's MockTransport: what goes on the wire
(token, headers, paths, query, body), how the gateway's answers are printed, and how every
kind of failure becomes one line. The live-gateway round trips are in test_cli.py; these
cover the client's branches in milliseconds."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from talon.cli.client import CliError
from talon.cli.main import build_parser, run_remote
from talon.client import Client

pytestmark = pytest.mark.fast

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, token: str | None = "tln_secret") -> Client:
    return Client("http://gateway.test/", token, transport=httpx.MockTransport(handler))


def run(client: Client, *argv: str) -> int:
    """A remote command as `talon` runs it, on this client."""
    args = build_parser().parse_args(list(argv))
    return run_remote(client, args)


def error_body(status: int, code: str, message: str, details: list[dict[str, str]]) -> Any:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message, "details": details}}
    )


def test_a_request_carries_the_token_headers_query_and_body(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"dryRun": True, "items": [
            {"kind": "Namespace", "name": "acme", "action": "created"}]})  # fmt: skip

    manifest = tmp_path / "ns.yaml"
    manifest.write_text("apiVersion: talon.dev/v1alpha1\nkind: Namespace\nmetadata: {name: acme}\n")
    assert run(client_for(handler), "apply", "-f", str(manifest), "--dry-run") == 0
    (request,) = seen
    assert str(request.url) == "http://gateway.test/v1/apply?dryRun=true"
    assert request.headers["Authorization"] == "Bearer tln_secret"
    assert request.headers["User-Agent"] == "talon-sdk"
    assert json.loads(request.content)["items"][0]["metadata"] == {"name": "acme"}


def test_without_a_token_no_authorization_is_sent(capsys: pytest.CaptureFixture[str]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "Authorization" not in request.headers
        return httpx.Response(200, json={"id": "t1", "name": "ci", "role": "read",
                                         "namespaces": ["*"]})  # fmt: skip

    assert run(client_for(handler, token=None), "tokens", "revoke", "t1") == 0
    assert capsys.readouterr().out == "token t1 revoked\n"


def test_an_error_answer_is_one_line_naming_the_fields_not_already_said() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error_body(422, "invalid", "invalid manifest: spec.cron: not a cron expression",
                          [{"path": "spec.cron", "message": "not a cron expression"},
                           {"path": "spec.timezone", "message": "unknown time zone"}])  # fmt: skip

    with pytest.raises(CliError) as caught:
        run(client_for(handler), "get", "schedule", "nightly", "-n", "acme")
    # The first detail is already in the message; only the second is added.
    assert str(caught.value) == (
        "invalid manifest: spec.cron: not a cron expression (HTTP 422 invalid): "
        "spec.timezone: unknown time zone"
    )


def test_an_html_error_page_from_the_server_in_front_is_still_one_line() -> None:
    page = "<html>\n<head><title>431 Request Header Fields Too Large</title></head></html>"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(431, text=page, headers={"Content-Type": "text/html"})

    with pytest.raises(CliError) as caught:
        run(client_for(handler), "whoami")
    assert str(caught.value) == "HTTP 431 (HTTP 431 http_error)"


def test_an_answer_that_is_not_the_apis_is_one_line() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/whoami":
            return httpx.Response(200, text="<html>captive portal</html>")
        return httpx.Response(200, json={"items": [{"metadata": {}}], "nextPageToken": None})

    with pytest.raises(CliError, match=r"^GET /v1/whoami: the answer is not what the API"):
        run(client_for(handler), "whoami")
    with pytest.raises(CliError, match=r"^GET /v1/ns/acme/agents: the answer is not what"):
        run(client_for(handler), "get", "agents", "-n", "acme")


def test_an_unreachable_gateway_is_a_cli_error_naming_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(CliError, match=r"cannot reach the gateway at http://gateway.test: "):
        run(client_for(handler), "whoami")


def test_listing_follows_page_tokens_and_keeps_the_selector(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pages = {None: (["a", "b"], "b"), "b": (["c"], None)}
    asked: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(dict(request.url.params))
        names, next_token = pages[request.url.params.get("pageToken")]
        items = [{"apiVersion": "talon.dev/v1alpha1", "kind": "Agent",
                  "metadata": {"name": n, "namespace": "acme"}, "spec": {"templateRef": "t"},
                  "status": {"phase": "Resolved"}} for n in names]  # fmt: skip
        return httpx.Response(200, json={"items": items, "nextPageToken": next_token})

    assert run(client_for(handler), "get", "agents", "-n", "acme", "-l", "tier=gold") == 0
    assert asked == [{"limit": "100", "labelSelector": "tier=gold"},
                     {"limit": "100", "labelSelector": "tier=gold", "pageToken": "b"}]  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["NAME", "TEMPLATE", "PHASE"]
    assert [line.split()[0] for line in lines[1:]] == ["a", "b", "c"]


def test_an_empty_list_says_so_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/ns/acme/schedules"
        return httpx.Response(200, json={"items": [], "nextPageToken": None})

    assert run(client_for(handler), "get", "schedules", "-n", "acme") == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "No schedules found in namespace acme.\n")


def sse(*events: dict[str, Any]) -> bytes:
    return b"retry: 2000\n\n" + b"".join(
        f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events
    )


def event(id_: int, type_: str, turn: str = "t-1", **data: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "type": type_,
        "turnId": turn,
        "data": data,
        "createdAt": "2026-01-01T00:00:00Z",
    }


class FakeSessions:
    """The calls `talon send` makes: create (or find) the session, post the message for its
    turn's events (the first stream), and follow the session's stream from the last event
    received if that connection breaks (the next streams)."""

    def __init__(self, *streams: bytes | httpx.SyncByteStream) -> None:
        self.streams = list(streams)  # one per connection the follower opens
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.resumed_from: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, dict(request.url.params), body))
        base = "/v1/ns/acme/agents/bot/sessions"
        if (request.method, request.url.path) == ("POST", base):
            return httpx.Response(200, json={"id": body["id"], "agent": "bot", "ns": "acme",
                                             "status": "active"})  # fmt: skip
        headers = {"Content-Type": "text/event-stream"}
        if (request.method, request.url.path) == ("POST", f"{base}/s1/message"):
            if request.headers.get("Accept") != "text/event-stream":
                return httpx.Response(202, json={"turnId": "t-1", "streamFrom": 7})
            status, headers = 202, {**headers, "Talon-Turn-Id": "t-1", "Talon-Stream-From": "7"}
        else:
            assert (request.method, request.url.path) == ("GET", f"{base}/s1/stream")
            self.resumed_from.append(request.headers.get("Last-Event-ID"))
            status = 200
        stream = self.streams.pop(0)
        if isinstance(stream, bytes):
            return httpx.Response(status, content=stream, headers=headers)
        return httpx.Response(status, stream=stream, headers=headers)


def test_send_prints_the_turn_as_it_streams_and_succeeds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway = FakeSessions(sse(
        event(8, "turn.started", attempt=1),
        event(9, "step.completed", step="call-model", provider="primary/openai:gpt"),
        event(10, "message.created", role="assistant", content="Two renewals."),
        event(11, "turn.completed", openTurns=0),
    ))  # fmt: skip
    code = run(client_for(gateway), "send", "bot", "s1", "Review renewals.", "-n", "acme",
               "--strategy", "interrupt")  # fmt: skip
    assert code == 0
    assert gateway.requests == [
        ("POST", "/v1/ns/acme/agents/bot/sessions", {}, {"id": "s1"}),
        ("POST", "/v1/ns/acme/agents/bot/sessions/s1/message", {"maxSeconds": "600"},
         {"content": "Review renewals.", "multitask_strategy": "interrupt"}),
    ]  # fmt: skip
    assert gateway.resumed_from == []  # the message's own answer carried the whole turn
    assert capsys.readouterr().out.splitlines() == [
        "turn t-1 queued",
        "turn started",
        "  call-model               done (primary/openai:gpt)",
        "",
        "assistant: Two renewals.",
        "turn completed",
    ]


def test_send_fails_when_its_turn_fails_but_not_when_another_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    other_fails = sse(event(8, "turn.failed", turn="t-0", message="boom"),
                      event(9, "turn.completed", openTurns=0))  # fmt: skip
    assert run(client_for(FakeSessions(other_fails)), "send", "bot", "s1", "hi", "-n", "acme") == 0
    ours_fails = sse(event(8, "turn.failed", message="model_unavailable", openTurns=0))
    assert run(client_for(FakeSessions(ours_fails)), "send", "bot", "s1", "hi", "-n", "acme") == 1
    assert "turn failed: model_unavailable" in capsys.readouterr().out


class BreaksAfter(httpx.SyncByteStream):
    """A stream that delivers `data` and then loses the connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


def test_a_stream_that_breaks_is_resumed_after_what_arrived(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway = FakeSessions(
        BreaksAfter(sse(event(8, "turn.started", attempt=1))),
        sse(event(9, "turn.completed", openTurns=0)),
    )  # fmt: skip
    assert run(client_for(gateway), "send", "bot", "s1", "hi", "-n", "acme") == 0
    assert gateway.resumed_from == ["8"]  # the second connection resumes after event 8
    out = capsys.readouterr().out.splitlines()
    assert out == ["turn t-1 queued", "turn started", "turn completed"]


def test_a_refused_stream_is_the_gateways_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error_body(404, "not_found", "session 's9' not found for agent 'bot'", [])

    with pytest.raises(CliError, match=r"session 's9' not found for agent 'bot' \(HTTP 404"):
        run(client_for(handler), "stream", "bot", "s9", "-n", "acme")


def test_sessions_need_a_namespace_and_an_agent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with pytest.raises(CliError, match="pass -n NAMESPACE"):
        run(client_for(handler), "get", "sessions", "--agent", "bot")
    for argv in (("stream", "bot", "s1"), ("send", "bot", "s1", "hi")):
        with pytest.raises(CliError, match="pass -n NAMESPACE"):
            run(client_for(handler), *argv)
    with pytest.raises(CliError, match="pass --agent AGENT"):
        run(client_for(handler), "get", "sessions", "-n", "acme")
