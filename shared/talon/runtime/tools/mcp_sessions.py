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
session that times out is dropped (a hung server costs its calls their timeout, never the
worker), and one the server has forgotten (a restart: 404 to the session's request, before
the call ran) is opened again for that call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import MCP_SESSION_ID

from talon.runtime.tools.base import ToolResult
from talon.runtime.tools.mcp_client import MCPUnavailable, calling, session, unavailable
from talon.tenancy.egress import EgressPolicy

log = logging.getLogger(__name__)
CLOSE_SECONDS = 5.0  # how long ending a turn's sessions may take before they are cancelled
_Operation = Callable[[ClientSession], Awaitable[ToolResult]]
_Key = tuple[str, tuple[tuple[str, str], ...]]


class TurnSessions:
    """The sessions of one turn, by server URL and headers (a rotated secret opens another)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: dict[_Key, _Served] = {}
        self._tasks: list[concurrent.futures.Future[None]] = []  # every session's, to wait for

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
                    self._tasks.append(served.task)
            try:
                return served.run(operation, timeout)
            except MCPUnavailable:
                self._drop(key, served)
                if not (reused and attempt == 1 and served.forgotten):
                    raise
                log.info("MCP server %s forgot this turn's session; opening another", url)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """End every session (each sends the server its end) and stop the loop."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
            tasks, self._tasks = self._tasks, []
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        for served in sessions:
            served.end()
        _, pending = concurrent.futures.wait(tasks, CLOSE_SECONDS)
        for task in pending:
            task.cancel()
        concurrent.futures.wait(pending, 1.0)  # cancelled tasks still leave their scopes
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_SECONDS)

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
        served.task.cancel()  # ended already, or hung: either way not to be used again


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
        self._queue: asyncio.Queue[tuple[_Operation, concurrent.futures.Future[Any]] | None]
        self._queue = asyncio.Queue()
        self._closed = False  # set in the loop's thread, once no operation will run
        # The server answered a request of this session 404: it does not know the session
        # (a restart), so it ran nothing, and another session may make the call (the MCP
        # transport's rule; the SDK reports it as an error of the call).
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

    async def _saw(self, response: httpx2.Response) -> None:
        if response.status_code == 404 and MCP_SESSION_ID in response.request.headers:
            self.forgotten = True

    def _put(self, item: tuple[_Operation, concurrent.futures.Future[Any]] | None) -> None:
        if not self._closed:
            self._queue.put_nowait(item)
        elif item is not None:
            _settle(item[1], MCPUnavailable(f"{self.url}: the session has ended"))

    async def _serve(self, headers: dict[str, str], timeout: float, egress: EgressPolicy) -> None:
        current: concurrent.futures.Future[Any] | None = None
        failure: BaseException | None = None
        try:
            async with session(self.url, headers, timeout, egress, self._saw) as opened:
                while (item := await self._queue.get()) is not None:
                    operation, current = item
                    try:
                        result = await operation(opened)
                    except Exception as exc:  # the caller decides whether to go on with it
                        error = unavailable(self.url, exc, timeout)
                        error.__cause__ = exc
                        _settle(current, error)
                    else:
                        if not current.done():
                            current.set_result(result)
                    current = None
        except BaseException as exc:  # transport errors arrive wrapped in exception groups
            failure = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._closed = True
            error = (
                unavailable(self.url, failure, timeout)
                if failure is not None
                else MCPUnavailable(f"{self.url}: the session has ended")
            )
            waiting = [current] if current is not None else []
            while not self._queue.empty():
                queued = self._queue.get_nowait()
                if queued is not None:
                    waiting.append(queued[1])
            for future in waiting:
                _settle(future, error)


def _settle(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
