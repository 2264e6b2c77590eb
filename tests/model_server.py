"""A scripted OpenAI-compatible chat completions server for tests (real HTTP, real client).

It is as strict as the real API about the shape of a request (see `openai_rules.py`): a
request the real API would refuse gets the same 400 (or 401 without a key), so a test fails
wherever production would. Each accepted request pops the next scripted reply: a text answer,
tool calls, an HTTP error status, a hang, or a raw body (a list of chunks when streamed;
`raw_text`: text sent as it is, JSON or not) for a malformed provider. With the script empty
it answers "ok". Every request body is recorded, and so is every refusal (`refused`); a body
that ends before its Content-Length (a client killed while sending) is not a request and is
only counted (`cut_short`).

A scripted tool call must name a function the request offered (a real model can only call
those): a script naming another is a broken test, recorded in `script_errors` and answered
with 500 (the `model_server` fixture fails the test on it), unless the call says
`"unoffered": True` (a model inventing a tool).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openai_rules import Refusal, check_request


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops connections from 16 concurrent workers

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client went away: fine
            super().handle_error(request, client_address)


class ModelServer:
    def __init__(self, api_keys: set[str] | None = None) -> None:
        self.script: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.refused: list[Refusal] = []
        self.script_errors: list[str] = []
        self.keys_seen: list[str] = []
        self.connections = 0  # accepted so far: whether clients reuse them
        self.cut_short = 0  # requests whose body ended before its Content-Length
        # None: any key is accepted (local servers); a set: only these (a real provider).
        self.api_keys = api_keys
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as real providers do (a new connection per call would be the
            # benchmark's cost, not Talon's); streamed answers use chunked encoding. Without
            # TCP_NODELAY (which real servers set) a reused connection's answer waited ~40 ms
            # for the client's delayed ACK between the headers and the body.
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if len(raw) < length:
                    # The client went away mid-body (a worker killed while sending): there is
                    # no request to judge and nobody to answer.
                    with server._lock:
                        server.cut_short += 1
                    self.close_connection = True
                    return
                refusal = check_request(
                    self.path, self.headers.get("Authorization"), raw, server.api_keys
                )
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                with server._lock:
                    server.keys_seen.append(key)
                    if refusal is not None:
                        server.refused.append(refusal)
                if refusal is not None:
                    self._send(refusal.status, json.dumps(refusal.body()).encode())
                    return
                body = json.loads(raw)
                with server._lock:
                    server.requests.append(body)
                    reply = server.script.popleft() if server.script else {"content": "ok"}
                unoffered = _unoffered_calls(body, reply)
                if unoffered:
                    message = f"the script calls {unoffered}, which the request did not offer"
                    with server._lock:
                        server.script_errors.append(message)
                    self._send(500, json.dumps({"error": {"message": message}}).encode())
                    return
                if "hang" in reply:
                    time.sleep(reply["hang"])
                if "status" in reply:
                    payload = json.dumps({"error": {"message": f"scripted {reply['status']}"}})
                    self._send(reply["status"], payload.encode())
                    return
                if body.get("stream"):
                    self._stream(body, reply)
                    return
                if "raw" in reply:  # a malformed provider: this body, whatever it is
                    self._send(200, json.dumps(reply["raw"]).encode())
                    return
                if "raw_text" in reply:  # ...or this text, JSON or not
                    self._send(200, reply["raw_text"].encode())
                    return
                self._send(200, json.dumps(_completion(body, reply)).encode())

            def _stream(self, body: dict[str, Any], reply: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunks = reply["raw"] if "raw" in reply else _chunks(body, reply)
                if "raw_text" in reply:  # events whose data is this text, JSON or not
                    chunks = reply["raw_text"]
                for number, chunk in enumerate(chunks):
                    if number == reply.get("drop_after"):
                        self.close_connection = True
                        return  # the connection ends mid-answer
                    data = chunk if "raw_text" in reply else json.dumps(chunk)
                    self._chunk(f"data: {data}\n\n".encode())
                    time.sleep(reply.get("chunk_delay", 0))
                self._chunk(b"data: [DONE]\n\n")
                if "after_done" in reply:  # bytes a sloppy provider sends after the end
                    self._chunk(reply["after_done"].encode("latin-1"))
                time.sleep(reply.get("stall_after_done", 0))  # a slow end of the body
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError):
                    self.wfile.write(payload)

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/v1"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def add(self, *replies: dict[str, Any]) -> None:
        with self._lock:
            self.script.extend(replies)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _unoffered_calls(request: dict[str, Any], reply: dict[str, Any]) -> list[str]:
    offered = {t["function"]["name"] for t in request.get("tools") or []}
    return [
        c["name"]
        for c in reply.get("tool_calls") or []
        if c["name"] not in offered and not c.get("unoffered")
    ]


def _completion(request: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
    finish = "stop"
    if reply.get("tool_calls"):
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": c.get("id", f"call_{uuid.uuid4().hex[:12]}"),
                "type": "function",
                "function": {"name": c["name"], "arguments": _arguments(c)},
            }
            for i, c in enumerate(reply["tool_calls"])
        ]
        finish = "tool_calls"
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "test"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": _usage(reply),
    }


def _usage(reply: dict[str, Any]) -> dict[str, int]:
    """The reply's token counts: scripted as `usage: [prompt, completion]`, else 10 and 5."""
    prompt, completion = reply.get("usage") or (10, 5)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def _arguments(call: dict[str, Any]) -> str:
    arguments = dict(call.get("arguments", {}))
    if call.get("nonce"):  # a fresh value per answer: shows whether an answer was re-requested
        arguments["nonce"] = uuid.uuid4().hex
    return json.dumps(arguments)


def _chunks(request: dict[str, Any], reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The streamed form of a reply: content in pieces (`pieces` or 3), tool calls whole."""
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
            "model": request.get("model", "test")}  # fmt: skip
    chunks = []
    content = reply.get("content") or ""
    pieces = reply.get("pieces") or _split(content, 3)
    for piece in pieces:
        chunks.append({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                            "finish_reason": None}]})  # fmt: skip
    finish = "stop"
    for i, call in enumerate(reply.get("tool_calls") or []):
        finish = "tool_calls"
        function = {"name": call["name"], "arguments": _arguments(call)}
        part = {"index": i, "id": call.get("id", f"call_{uuid.uuid4().hex[:12]}"),
                "type": "function", "function": function}  # fmt: skip
        delta = {"tool_calls": [part]}
        chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({**base, "choices": [], "usage": _usage(reply)})
    return chunks


def _split(text: str, parts: int) -> list[str]:
    if not text:
        return []
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


if __name__ == "__main__":
    # A standalone server (for the benchmark): prints its URL, serves until killed.
    server = ModelServer()
    print(server.url, flush=True)
    threading.Event().wait()
