"""ID tokens for the private ops_mcp function are minted once per audience and reused until
five minutes before they expire, also across requests proxied by the gateway to a real HTTP
upstream. The minting function (Google's metadata server in the cloud) is a fake handed in
through the cache's one-function port; the clock is one the test moves."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import flask
import pytest

from talon.api.id_tokens import IdTokenCache, expiry
from talon.api.ops_proxy import OPS_PREFIX, OpsProxy

pytestmark = pytest.mark.fast

LIFETIME = 3600  # what Google's ID tokens last


def _jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeMinter:
    """Mints numbered tokens that expire an hour after the fake clock's now."""

    def __init__(self, *, delay: float = 0.0, exp: bool = True) -> None:
        self.now = 1_900_000_000.0
        self.minted: list[str] = []  # the audience of each mint
        self.delay = delay
        self.exp = exp
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def __call__(self, audience: str) -> str:
        time.sleep(self.delay)
        with self._lock:
            self.minted.append(audience)
            claims: dict[str, Any] = {"aud": audience, "n": len(self.minted)}
        if self.exp:
            claims["exp"] = int(self.now) + LIFETIME
        return _jwt(claims)


def _number(token: str) -> int:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["n"]


def test_a_token_is_reused_until_five_minutes_before_it_expires() -> None:
    mint = FakeMinter()
    tokens = IdTokenCache(mint, clock=mint.clock)
    first = tokens("https://ops.a.run.app")
    assert expiry(first) == mint.now + LIFETIME
    for _ in range(50):
        assert tokens("https://ops.a.run.app") == first
    mint.now += LIFETIME - 301  # 5 min 1 s left: still good
    assert tokens("https://ops.a.run.app") == first
    assert mint.minted == ["https://ops.a.run.app"]
    mint.now += 2  # 4 min 59 s left: time for a new one
    second = tokens("https://ops.a.run.app")
    assert _number(second) == 2 and expiry(second) == mint.now + LIFETIME
    assert tokens("https://ops.a.run.app") == second
    assert len(mint.minted) == 2


def test_each_audience_has_its_own_token() -> None:
    mint = FakeMinter()
    tokens = IdTokenCache(mint, clock=mint.clock)
    a, b = tokens("https://a.run.app"), tokens("https://b.run.app")
    assert a != b
    assert (tokens("https://a.run.app"), tokens("https://b.run.app")) == (a, b)
    assert mint.minted == ["https://a.run.app", "https://b.run.app"]


def test_a_token_without_a_readable_expiry_is_not_kept() -> None:
    mint = FakeMinter(exp=False)
    tokens = IdTokenCache(mint, clock=mint.clock)
    assert tokens("https://ops.a.run.app") != tokens("https://ops.a.run.app")
    assert len(mint.minted) == 2
    assert expiry("not-a-jwt") == 0.0


def test_concurrent_callers_wait_for_one_mint() -> None:
    mint = FakeMinter(delay=0.2)
    tokens = IdTokenCache(mint, clock=mint.clock)
    start = threading.Barrier(8)
    got: list[str] = []

    def run() -> None:
        start.wait()
        got.append(tokens("https://ops.a.run.app"))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(got) == 8 and len(set(got)) == 1
    assert len(mint.minted) == 1


@pytest.fixture
def upstream() -> Iterator[dict[str, Any]]:
    """An HTTP server standing in for the private ops_mcp function: records the ID token each
    request carries in X-Serverless-Authorization."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.headers.get("X-Serverless-Authorization", ""))
            body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{server.server_port}", "seen": seen}
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _proxy(proxy: OpsProxy) -> flask.Response:
    request = flask.Request.from_values(
        OPS_PREFIX, method="POST", data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        headers={"Content-Type": "application/json", "Authorization": "Bearer tln_caller"},
    )  # fmt: skip
    return proxy(request, 1 << 20)


def test_the_ops_proxy_sends_one_token_until_it_nears_expiry(upstream: dict[str, Any]) -> None:
    mint = FakeMinter()
    proxy = OpsProxy(upstream["url"], id_tokens=IdTokenCache(mint, clock=mint.clock))
    for _ in range(5):
        assert _proxy(proxy).status_code == 200
    assert mint.minted == [upstream["url"]]  # the audience is the upstream's URL
    assert len(set(upstream["seen"])) == 1
    assert _number(upstream["seen"][0].removeprefix("Bearer ")) == 1
    mint.now += LIFETIME - 299
    assert _proxy(proxy).status_code == 200
    assert _number(upstream["seen"][-1].removeprefix("Bearer ")) == 2
    assert len(mint.minted) == 2


def test_the_ops_proxy_answers_502_when_no_token_can_be_had(upstream: dict[str, Any]) -> None:
    def no_metadata_server(audience: str) -> str:
        raise OSError("metadata server unreachable")

    proxy = OpsProxy(upstream["url"], id_tokens=IdTokenCache(no_metadata_server))
    answer = _proxy(proxy)
    assert answer.status_code == 502 and b"metadata server unreachable" in answer.data
    assert upstream["seen"] == []
