"""One turn's MCP sessions: a server's session opens with the turn's first call to it and
serves the turn's later calls; `close` (the turn's end) ends them all.

A call on an open session costs its request (~2 ms against a local server) where a call of
its own costs a connection, the initialize handshake and the tool list the SDK reads to
check results (~11 ms). Sessions never outlive their turn, so no server-side session state
passes between turns, sessions or namespaces; within a turn, calls see one session, as a
stateful server expects.

The SDK is asyncio-only and turns run on plain threads: each turn that calls a server gets
an event loop on a thread of its own, and each server's session lives in one task on it
(anyio's scopes must be left by the task that entered them), taking operations from a
queue. The calling thread waits on a future with the same bound as a call of its own; a
session that times out or fails is dropped (its task cancelled through an anyio cancel
scope, which keeps cancelling whatever the SDK awaits while unwinding), so a hung server
costs its calls their timeout, never the worker. A call is made again on a new session only
when it cannot have run: it was never sent (the session had ended), or the server answered
its `tools/call` 404, which the MCP transport defines as "no such session" (a restart).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import MCP_SESSION_ID

from talon.runtime.tools.base import ToolResult
from talon.runtime.tools.mcp_client import MCPUnavailable, calling, session, unavailable
from talon.tenancy.egress import EgressPolicy

log = logging.getLogger(__name__)
END_SECONDS = 1.0  # what a session's end (the SDK's DELETE) may take at the turn's end
_Operation = Callable[[ClientSession], Awaitable[ToolResult]]
_Item = tuple[_Operation, "concurrent.futures.Future[ToolResult]"]
_Key = tuple[str, tuple[tuple[str, str], ...]]


class NotSent(MCPUnavailable):
    """The session had ended before the call reached it: nothing was sent."""


class TurnSessions:
    """The sessions of one turn, by server URL and headers (a rotated secret opens another)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: dict[_Key, _Served] = {}
        self._all: list[_Served] = []  # every session opened, to wait for at the end

    def call_tool(
        self,
        url: str,
        headers: dict[str, str],
        name: str,
        arguments: dict[str, Any],
        timeout: float,
        egress: EgressPolicy,
    ) -> ToolResult:
        """`mcp_client.call_tool`, on the turn's session with the server."""
        key = (url, tuple(sorted(headers.items())))
        operation = calling(name, arguments, timeout)
        for attempt in (1, 2):
            with self._lock:
                served = self._sessions.get(key)
                reused = served is not None
                if served is None:
                    served = _Served(self._running_loop(), url, headers, timeout, egress)
                    self._sessions[key] = served
                    self._all.append(served)
            try:
                return served.run(operation, timeout)
            except MCPUnavailable as exc:
                self._drop(key, served)
                unrun = isinstance(exc, NotSent) or served.forgotten
                if not (reused and attempt == 1 and unrun):
                    raise
                log.info("MCP server %s: the turn's session is gone (%s); opening another",
                         url, exc)  # fmt: skip
        raise AssertionError("unreachable")

    def close(self) -> None:
        """End every session (each tells the server, within END_SECONDS) and stop the loop."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
            opened, self._all = self._all, []
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        for served in sessions:
            served.end()
        tasks = [served.task for served in opened]
        _, pending = concurrent.futures.wait(tasks, END_SECONDS + 1.0)
        for served in opened:
            if served.task in pending:
                served.cancel()
        concurrent.futures.wait(pending, 1.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(2.0)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=_run_forever, args=(self._loop,), name="talon-mcp-turn", daemon=True
            )
            self._thread.start()
        return self._loop

    def _drop(self, key: _Key, served: _Served) -> None:
        with self._lock:
            if self._sessions.get(key) is served:
                del self._sessions[key]
        served.cancel()  # ended already, or hung: either way not to be used again


class _Served:
    """One server's session, in a task that runs the operations put to it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        url: str,
        headers: dict[str, str],
        timeout: float,
        egress: EgressPolicy,
    ) -> None:
        self.url = url
        self._loop = loop
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._closed = False  # set in the loop's thread, once no operation will run
        self._scope: anyio.CancelScope | None = None  # the task's, once it runs
        self._cancelled = False  # ...or to cancel as it starts
        # The server answered the running operation's `tools/call` 404 (it does not know
        # the session), so that call did not run (the SDK reports it as the call's error).
        self.forgotten = False
        self.task = asyncio.run_coroutine_threadsafe(self._serve(headers, timeout, egress), loop)

    def run(self, operation: _Operation, timeout: float) -> ToolResult:
        future: concurrent.futures.Future[ToolResult] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._put, (operation, future))
        try:
            # The bound a call of its own has: connecting and initialising included.
            return future.result(timeout + 5)
        except concurrent.futures.TimeoutError as exc:
            raise MCPUnavailable(f"no answer from {self.url} within {timeout:g} s") from exc

    def end(self) -> None:
        self._loop.call_soon_threadsafe(self._put, None)

    def cancel(self) -> None:
        self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    def _put(self, item: _Item | None) -> None:
        if not self._closed:
            self._queue.put_nowait(item)
        elif item is not None:
            _fail(item[1], NotSent(f"{self.url}: the session has ended"))

    async def _saw(self, response: httpx2.Response) -> None:
        request = response.request
        if response.status_code != 404 or MCP_SESSION_ID not in request.headers:
            return
        try:
            method = json.loads(request.content).get("method")
        except (ValueError, AttributeError, httpx2.RequestNotRead):
            return
        if method == "tools/call":
            self.forgotten = True

    async def _serve(self, headers: dict[str, str], timeout: float, egress: EgressPolicy) -> None:
        current: concurrent.futures.Future[ToolResult] | None = None
        failure: BaseException | None = None
        try:
            with anyio.CancelScope() as self._scope:
                if self._cancelled:
                    self._scope.cancel()
                async with session(self.url, headers, timeout, egress, self._saw) as opened:
                    while (item := await self._queue.get()) is not None:
                        operation, current = item
                        self.forgotten = False
                        try:
                            result = await operation(opened)
                        except Exception as exc:  # the caller drops the session
                            error = unavailable(self.url, exc, timeout)
                            error.__cause__ = exc
                            _fail(current, error)
                        else:
                            if not current.done():
                                current.set_result(result)
                        current = None
                    # Ending: the session's end (a DELETE) is bounded, a quiet server or not.
                    self._scope.deadline = anyio.current_time() + END_SECONDS
        except Exception as exc:  # transport errors arrive wrapped in exception groups
            failure = exc
        finally:
            self._closed = True
            why = unavailable(self.url, failure, timeout) if failure is not None else None
            if current is not None:  # cancelled: its caller gave up waiting
                _fail(current, why or unavailable(self.url, TimeoutError(), timeout))
            while not self._queue.empty():
                queued = self._queue.get_nowait()
                if queued is not None:
                    _fail(queued[1], NotSent(str(why or f"{self.url}: the session has ended")))


def _fail(future: concurrent.futures.Future[ToolResult], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # As asyncio.run ends: whatever is left is cancelled and awaited, then the loop closed.
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
