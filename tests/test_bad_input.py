"""Input the standard decoders and servers accept but later layers choke on: each must be a
4xx with the JSON error shape naming the field, never a 500 and never HTML."""

from __future__ import annotations

import os
from typing import Any

import pytest

import samples
from conftest import Api

JSON = {"Content-Type": "application/json"}
YAML = {"Content-Type": "application/yaml"}
MESSAGE = "/v1/ns/shop/agents/bot/sessions/s/message"
SESSIONS = "/v1/ns/shop/agents/bot/sessions"


@pytest.fixture
def shop(api: Api) -> Api:
    api.ok("POST", "/v1/namespaces", 201, json=samples.namespace("shop"))
    api.ok("POST", "/v1/ns/shop/agent-templates", 201, json=samples.template("shop"))
    api.ok("POST", "/v1/ns/shop/agents", 201, json=samples.agent("shop"))
    api.ok("POST", SESSIONS, 201, json={"id": "s"})
    return api


def problem(response: Any, status: int = 400) -> dict[str, Any]:
    """The error body, checked for the gateway's shape; asserts the status."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]


def no_messages(api: Api) -> None:
    assert api.ok("GET", f"{SESSIONS}/s/messages")["items"] == []


# --- bodies --------------------------------------------------------------------------------

DEEP_JSON = b'{"content": "x", "metadata": ' + b"[" * 1000 + b"]" * 1000 + b"}"
DEEP_YAML = b"content: x\nmetadata: " + b"[" * 1000 + b"]" * 1000 + b"\n"
HUGE = b"9" * 5000


@pytest.mark.parametrize(
    ("body", "headers", "path", "message"),
    [
        # RecursionError in the decoder (or in anything walking the value later).
        (DEEP_JSON, JSON, "(body)", "nested more than 64 levels deep"),
        (b'{"content": ' + b"[" * 100 + b"]" * 100 + b"}", JSON, "content" + "[0]" * 64,
         "nested more than 64 levels deep"),
        # Python's int-str limit raises ValueError, which is no decode error.
        (b'{"content": "x", "multitask_strategy": ' + HUGE + b"}", JSON, "multitask_strategy",
         "integer has more than 4300 digits"),
        (b"content: x\nmultitask_strategy: " + HUGE + b"\n", YAML, "multitask_strategy",
         "integer has more than 4300 digits"),
        # Python's JSON reads these; PostgreSQL's jsonb does not.
        (b'{"content": NaN}', JSON, "content", "must be a finite number"),
        (b'{"content": -Infinity}', JSON, "content", "must be a finite number"),
        (b'{"content": 1e400}', JSON, "content", "must be a finite number"),
        (b"content: .inf\n", YAML, "content", "must be a finite number"),
        # A lone surrogate has no UTF-8 encoding: it cannot be stored or sent on.
        (b'{"content": "a\\ud800b"}', JSON, "content", "lone surrogate U+D800"),
        (b'content: "a\\udfffb"\n', YAML, "content", "lone surrogate U+DFFF"),
        # Duplicate keys would be merged silently, the last one winning: refused instead.
        (b'{"content": "a", "content": "b"}', JSON, "content", "duplicate key"),
        (b"content: a\ncontent: b\n", YAML, "content", "duplicate key"),
        # YAML types JSON has not.
        (b"content: !!binary aGVsbG8=\n", YAML, "content", "a YAML binary is not a JSON value"),
        (b"content: x\nyes: 1\n", YAML, "True", "keys must be strings, not boolean"),
    ],
)  # fmt: skip
def test_message_bodies_that_decoders_accept_but_storage_cannot(
    shop: Api, body: bytes, headers: dict[str, str], path: str, message: str
) -> None:
    error = problem(shop.post(MESSAGE, content=body, headers=headers))
    assert error["code"] == "bad_request"
    assert error["details"][0]["path"] == path
    assert message in error["details"][0]["message"]
    no_messages(shop)


def test_deep_yaml_is_refused_before_it_is_built(shop: Api) -> None:
    error = problem(shop.post(MESSAGE, content=DEEP_YAML, headers=YAML))
    assert error["details"][0]["path"] == "(body)"
    assert "nested more than 64 levels deep" in error["message"]
    assert "line 2" in error["message"]  # where, from the YAML parser


def test_bad_values_deep_inside_are_named_by_their_path(shop: Api) -> None:
    body = b'{"id": "m", "metadata": {"a": [1, {"b": NaN, "\\u0000k": 1}], "a2": {"c": 2, "c": 3}}}'
    error = problem(shop.post(SESSIONS, content=body, headers=JSON))
    assert error["details"] == [
        {"path": "metadata.a[1].b", "message": "must be a finite number (NaN and Infinity are "
         "not JSON)"},
        {"path": "metadata.a[1].\\u0000k", "message": "in the key: NUL characters (U+0000) are "
         "not accepted"},
        {"path": "metadata.a2.c", "message": "duplicate key"},
    ]  # fmt: skip
    assert error["message"] == f"{error['details'][0]['path']}: {error['details'][0]['message']}"
    assert shop.get(f"{SESSIONS}/m").status_code == 404


def test_duplicate_keys_in_a_manifest_and_in_multi_document_yaml(shop: Api) -> None:
    text = (
        '{"apiVersion": "talon.dev/v1alpha1", "kind": "Schedule", "metadata": {"name": "wake"}, '
        '"spec": {"cron": "0 9 * * *", "target": {"agent": "bot", "sessionId": "a", '
        '"sessionId": "b"}, "inputMessage": "hi"}}'
    )
    error = problem(shop.post("/v1/ns/shop/schedules", content=text, headers=JSON))
    assert error["details"] == [{"path": "spec.target.sessionId", "message": "duplicate key"}]
    stream = b"kind: Namespace\n---\nkind: Namespace\nmetadata: {name: a}\nmetadata: {name: b}\n"
    error = problem(shop.post("/v1/apply", content=stream, headers=YAML))
    assert error["details"] == [{"path": "[1].metadata", "message": "duplicate key"}]
    assert shop.get("/v1/ns/shop/schedules/wake").status_code == 404


def test_yaml_timestamps_stay_strings(shop: Api) -> None:
    # PyYAML would make datetime objects of these (a 500 when stored in session metadata).
    body = b"id: t\nmetadata:\n  due: 2030-01-01T09:00:00\n  day: 2030-01-01\n"
    created = shop.ok("POST", SESSIONS, 201, content=body, headers=YAML)
    assert created["metadata"] == {"due": "2030-01-01T09:00:00", "day": "2030-01-01"}


# --- query, headers and path segments -----------------------------------------------------

TURN = "/v1/ns/shop/agents/bot/sessions/s/turns"


@pytest.mark.parametrize(
    ("query", "param", "message"),
    [
        (f"{SESSIONS}?pageToken=%00", "pageToken", "must be a nextPageToken from this API"),
        ("/v1/tokens?pageToken=%00", "pageToken", "must be a nextPageToken from this API"),
        ("/v1/ns/shop/agents?pageToken=%00", "pageToken", "must be a nextPageToken from this API"),
        ("/v1/namespaces?labelSelector=a%00b", "labelSelector", "must be a label selector "
         "without control characters"),
        (f"{SESSIONS}/s/messages?after=1%00", "after", "must be an integer from 0 to "
         "9223372036854775807"),
        ("/v1/apply?dryRun=%00", "dryRun", "must be true or false"),
    ],
)  # fmt: skip
def test_nul_in_a_query_value(shop: Api, query: str, param: str, message: str) -> None:
    # The page tokens went to PostgreSQL as parameters: "invalid byte sequence", a 500.
    response = shop.request("POST" if "apply" in query else "GET", query, json={})
    assert problem(response)["details"] == [{"path": param, "message": message}]


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/v1/ns/a%00b/agents", "ns"),
        ("/v1/namespaces/a%00b", "ns"),
        ("/v1/ns/shop/agents/a%00b", "name"),
        ("/v1/ns/shop/schedules/a%00b/fires", "name"),
        ("/v1/ns/shop/agents/a%00b/sessions", "agent"),
        (f"{SESSIONS}/a%00b", "session_id"),
        (f"{SESSIONS}/a%00b/stream", "session_id"),
        (f"{TURN}/a%00b", "turn_id"),
        ("/v1/tokens/a%00b", "token_id"),
        ("/v1/ns/Shop/agents", "ns"),  # not NUL, but no name can look like this either
        ("/v1/ns/shop/agents/" + "a" * 64, "name"),
    ],
)
def test_malformed_path_segments_are_named(shop: Api, url: str, param: str) -> None:
    error = problem(shop.get(url))
    assert error["code"] == "bad_request"
    assert error["details"][0]["path"] == param
    assert error["message"].startswith(f"path parameter {param} must be")


def test_path_checks_come_after_authentication(shop: Api) -> None:
    anonymous = shop.as_token(None)
    assert problem(anonymous.get("/v1/ns/a%00b/agents"), 401)["code"] == "unauthenticated"


@pytest.mark.parametrize(
    ("headers", "query", "path"),
    [
        ({"Last-Event-ID": "9" * 400}, "", "Last-Event-ID"),  # bigint overflow at PostgreSQL
        ({"Last-Event-ID": "-1"}, "", "Last-Event-ID"),
        ({"Last-Event-ID": "1_0"}, "", "Last-Event-ID"),  # int() accepts it; HTTP does not
        ({}, "?lastEventId=" + "9" * 400, "lastEventId"),
        ({}, "?lastEventId=%D9%A1", "lastEventId"),  # ARABIC-INDIC DIGIT ONE: int() takes it
        ({}, "?maxSeconds=1&maxSeconds=2", "maxSeconds"),
        ({}, "?untilTurnEnd=maybe", "untilTurnEnd"),
    ],
)
def test_stream_position_and_options_are_checked(
    shop: Api, headers: dict[str, str], query: str, path: str
) -> None:
    error = problem(shop.get(f"{SESSIONS}/s/stream{query}", headers=headers))
    assert error["details"][0]["path"] == path


def test_idempotency_key_must_be_printable_ascii(shop: Api) -> None:
    for key in ("", "k" * 201, "tab\there"):
        error = problem(shop.post(MESSAGE, json={"content": "x"}, headers={"Idempotency-Key": key}))
        assert error["details"] == [
            {"path": "Idempotency-Key", "message": "must be 1 to 200 printable ASCII characters"}
        ]
    no_messages(shop)


# --- schedules -------------------------------------------------------------------------------


def _schedule(**spec: Any) -> dict[str, Any]:
    body = samples.schedule("shop")
    body["spec"].update(spec)
    if spec.get("kind") == "once":
        del body["spec"]["cron"]
    return body


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        # Valid cron syntax that matches no date: every next-fire computation failed (500).
        ({"cron": "0 0 30 2 *"}, "spec.cron", "'0 0 30 2 *' never fires (no date matches it)"),
        ({"cron": "0 0 31 4,6,9,11 *"}, "spec.cron", "never fires"),
        # A zone key becomes a file path: a long one was an OSError (500).
        ({"timezone": "A" * 2000}, "spec.timezone", "is not an IANA time zone"),
        ({"timezone": "America"}, "spec.timezone", "is not an IANA time zone"),  # a directory
        ({"timezone": "../../etc/passwd"}, "spec.timezone", "is not an IANA time zone"),
        # Valid ISO 8601 whose UTC instant is past datetime's range (OverflowError, 500).
        ({"kind": "once", "at": "9999-12-31T23:59:59-14:00"}, "spec.at",
         "must be from 1970-01-01 to before 9999-01-01 (UTC)"),
        ({"kind": "once", "at": "0001-01-01T00:00:00+14:00"}, "spec.at", "must be from 1970"),
        ({"kind": "once", "at": "9999-12-31T23:59:59", "timezone": "Pacific/Kiritimati"},
         "spec.at", "must be from 1970"),
    ],
)  # fmt: skip
def test_schedules_that_could_never_be_computed(
    shop: Api, spec: dict[str, Any], path: str, message: str
) -> None:
    shop.ok("POST", "/v1/ns/shop/agents", 201, json=samples.agent("shop", "other"))
    body = _schedule(**spec)
    body["spec"]["target"]["agent"] = "other"
    error = problem(shop.post("/v1/ns/shop/schedules", json=body), 422)
    assert error["code"] == "invalid"
    assert error["details"][0]["path"] == path
    assert message in error["details"][0]["message"]
    assert len(error["message"]) < 300  # the 2,000-character zone is not echoed whole
    # The same through apply, and as a merge patch of a good schedule.
    error = problem(shop.post("/v1/apply", json={"items": [body]}), 422)
    assert error["details"][0]["path"] == f"items[0].{path}"
    good = shop.ok("POST", "/v1/ns/shop/schedules", 201, json=samples.schedule("shop"))
    patch = {"spec": {**spec, **({"cron": None} if "at" in spec else {})}}
    error = problem(shop.patch("/v1/ns/shop/schedules/wake", json=patch), 422)
    assert error["details"][0]["path"] == path
    assert shop.ok("GET", "/v1/ns/shop/schedules/wake")["spec"] == good["spec"]


# --- the request itself: what reaches the app through the WSGI server --------------------


def raw_request(base_url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client would (a negative Content-Length, undecodable paths) and
    return (status, headers, body) of the answer."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as connection:
        connection.sendall(head.replace(b"\n", b"\r\n") + b"\r\n" + body)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    header_block, _, content = received.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, content


def raw_problem(answer: tuple[int, dict[str, str], bytes], status: int) -> dict[str, Any]:
    import json

    code, headers, content = answer
    assert code == status, (code, content[:300])
    assert headers["content-type"].startswith("application/json"), content[:300]
    return json.loads(content)["error"]


AUTH = b"Authorization: Bearer test-admin-token-0123456789\n"


def test_negative_content_length(shop: Api) -> None:
    # werkzeug reads it as 0: the body silently vanished and "request body is empty" was the
    # answer, naming the wrong thing. (gunicorn refuses it before the app; see transport.py.)
    head = b"POST " + MESSAGE.encode() + b" HTTP/1.1\nHost: x\n" + AUTH
    head += b"Content-Type: application/json\nContent-Length: -5\nConnection: close\n"
    error = raw_problem(raw_request(shop.base_url, head, b'{"content": "x"}'), 400)
    assert error["details"] == [{"path": "Content-Length", "message": "'-5' is not a length"}]
    no_messages(shop)


@pytest.mark.parametrize(
    "path", [b"/v1/ns/%ff%fe/agents", b"/v1/%c3%28", b"/v1/ns/%ef%bf%bd/agents"]
)
def test_path_that_is_not_utf8(shop: Api, path: bytes) -> None:
    head = b"GET " + path + b" HTTP/1.1\nHost: x\n" + AUTH + b"Connection: close\n"
    error = raw_problem(raw_request(shop.base_url, head), 400)
    assert error["details"] == [
        {"path": "(path)", "message": "not valid UTF-8 (or contains U+FFFD)"}
    ]


def test_oversized_headers(shop: Api) -> None:
    # Within what the server lets through, the app refuses with JSON, naming the header...
    error = problem(shop.get("/v1/whoami", headers={"X-Big": "a" * 9000}), 431)
    assert error["details"] == [{"path": "X-Big", "message": "longer than 8190 bytes"}]
    many = {f"X-Part-{i}": "a" * 8000 for i in range(9)}
    error = problem(shop.get("/v1/whoami", headers=many), 431)
    assert error["details"][0]["path"] == "(headers)"
    # ...beyond it, the WSGI server answers on its own (werkzeug: a header line over 64 KiB
    # is a 431 with an HTML page), before any application code runs: documented, not ours.
    huge = shop.get("/v1/whoami", headers={"X-Huge": "a" * 70_000})
    assert huge.status_code == 431
    assert huge.headers["Content-Type"].startswith("text/html")


def test_the_frameworks_own_errors_are_json(api: Api) -> None:
    # functions-framework answers these paths itself, without calling the function.
    for path in ("/favicon.ico", "/robots.txt"):
        response = api.get(path)
        assert problem(response, 404)["code"] == "not_found"
        assert len(response.headers["X-Request-Id"]) == 32


def test_a_gateway_that_cannot_start_answers_json_503(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from talon import entrypoints
    from talon.store.local_postgres import free_port

    working = api.ok("GET", "/v1/whoami")
    database_url = os.environ["TALON_CONTROL_PLANE_DATABASE_URL"]
    closed = f"postgresql://talon@127.0.0.1:{free_port()}/talon"
    monkeypatch.setenv("TALON_CONTROL_PLANE_DATABASE_URL", closed)
    entrypoints.reset()
    response = api.get("/v1/whoami")
    error = problem(response, 503)
    assert error["code"] == "unavailable"
    assert response.headers["Retry-After"] == "1" and response.headers["X-Request-Id"]
    assert "127.0.0.1" not in error["message"]  # the exception's text stays in the log
    monkeypatch.setenv("TALON_CONTROL_PLANE_DATABASE_URL", database_url)
    entrypoints.reset()
    assert api.ok("GET", "/v1/whoami") == working  # built again on the next request
