"""gunicorn's gthread worker, changed where a slow client could hold a thread or the loop.

gunicorn 27's gthread worker hands a connection to a thread as soon as it has any data,
and the thread then blocks in `recv()` until the whole request head has arrived: a client
that sends a partial head and waits holds a thread forever (70 of them stop a 64-thread
gateway). And when it closes a connection it lingers (up to 2 s, reading what the client
still sends) on the main loop, which accepts nothing meanwhile: 70 clients that never
close their end stop it for 2 s each, one after another (measured with
bench/slow_clients.py: no answer for over a minute). Here:

- a request head is collected on the main loop, without blocking (the sockets are
  non-blocking there), and handed to a thread only once it is complete; a head not
  complete `header_seconds` after its connection became readable is answered 408 (and
  one over heads.MAX_HEAD_BYTES 431), and the connection closed;
- lingering closes run on the main loop too, as poller events, never blocking it;
- a connection whose request body the application left unread (unread_body.leave_unread)
  is closed after the response instead of being drained for the next request;
- an event stream, once its first events are sent, is handed over to the process's stream
  hub (stream_hub.py): thousands of open streams hold no thread.

TLS, HTTP/2 prior knowledge and the uWSGI protocol (none of which Talon uses) keep
gunicorn's own path.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
import time
from datetime import datetime
from functools import partial
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker

from talon.api.sse import HANDOVER_KEY, HUB_KEY
from talon.api.unread_body import CLOSE_CONNECTION
from talon.serve.heads import MAX_HEAD_BYTES, head_complete, refusal
from talon.serve.stream_hub import StreamHub

LINGER_SECONDS = 2.0  # gunicorn's close_graceful defaults
LINGER_BYTES = 64 * 1024
_RECV = 64 * 1024


class _Conn(TConn):
    """A connection whose graceful close is handed back to the worker's loop, and which is
    left alone once its event stream was handed over to the stream hub."""

    linger: Any = None
    handed_over = False

    def close(self, graceful: bool = False) -> None:
        if self.handed_over:
            return
        if graceful and self.linger is not None:
            self.linger(self)
        else:
            super().close(graceful)


class _Head:
    __slots__ = ("buffer", "conn", "deadline")

    def __init__(self, conn: TConn, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.buffer = bytearray()


class _Linger:
    __slots__ = ("deadline", "drained", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.drained = 0


def close_if_left_unread(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    """gunicorn's post_request hook (set by talon.serve): a body the application left
    unread closes the connection (see TalonThreadWorker.handle_request)."""
    if environ.get(CLOSE_CONNECTION):
        req.force_close()


class TalonThreadWorker(ThreadWorker):
    # Set by talon.serve in the arbiter, before the workers are forked.
    header_seconds: float = 10.0
    alive: bool  # gunicorn's, untyped there

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Dicts keep insertion order, and every entry gets the same timeout when added:
        # oldest first is soonest deadline first.
        self._heads: dict[socket.socket, _Head] = {}
        self._lingering: dict[socket.socket, _Linger] = {}
        self.stream_hub = StreamHub()

    # -- connections: heads collected on the loop -------------------------------------------

    def _collects_heads(self, client: Any) -> bool:
        return (
            not self.cfg.is_ssl
            and getattr(self.cfg, "protocol", "http") == "http"
            and not negotiation.prior_knowledge_allowed(self.cfg, client)
        )

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):  # out of files: wait for some back
                self.log.warning("cannot accept a connection: %s", e)
                return
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.linger = self._linger
        if self._collects_heads(client_addr):
            self._await_head(conn)
        else:
            self.enqueue_req(conn)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        """A kept-alive connection has data: its next request head is collected the same way."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        if self._collects_heads(conn.client):
            self._await_head(conn)
            self._on_head_bytes(self._heads[conn.sock], conn.sock)
        else:
            self.enqueue_req(conn)

    def _await_head(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        head = _Head(conn, time.monotonic() + self.header_seconds)
        self._heads[conn.sock] = head
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_bytes, head))

    def _on_head_bytes(self, head: _Head, sock: socket.socket) -> None:
        if self._heads.get(sock) is not head:
            return  # already handed over or closed
        try:
            data = sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._forget_head(head)
            self.nr_conns -= 1
            util.close(sock)
            return
        scanned = len(head.buffer)
        head.buffer += data
        if head_complete(head.buffer, scanned):
            self._hand_over(head)
        elif len(head.buffer) > MAX_HEAD_BYTES:
            message = f"the request line and headers exceed {MAX_HEAD_BYTES} bytes"
            self._refuse_head(head, 431, "headers_too_large", message)

    def _hand_over(self, head: _Head) -> None:
        """The head is complete: a thread parses it (from these bytes) and serves it."""
        self._forget_head(head)
        conn = head.conn
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(head.buffer))
        conn.data_ready = True  # gunicorn's thread would otherwise wait for data first
        self.enqueue_req(conn)

    def _refuse_head(self, head: _Head, status: int, code: str, message: str) -> None:
        self._forget_head(head)
        self.nr_conns -= 1
        with contextlib.suppress(OSError):  # best effort: never block the loop on a client
            head.conn.sock.send(refusal(status, code, message), socket.MSG_DONTWAIT)
        self._linger(head.conn)

    def _forget_head(self, head: _Head) -> None:
        self._heads.pop(head.conn.sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(head.conn.sock)

    def _expire_heads(self) -> None:
        now = time.monotonic()
        for head in list(self._heads.values()):
            if not self.alive:  # stopping: no request was started on these
                self._forget_head(head)
                self.nr_conns -= 1
                util.close(head.conn.sock)
            elif head.deadline <= now:
                message = (
                    f"the request line and headers did not arrive within "
                    f"{self.header_seconds:g} seconds"
                )
                self._refuse_head(head, 408, "request_timeout", message)
            else:
                break

    def handle_request(self, req: Any, conn: TConn) -> bool:
        """gunicorn 27's, but for an event stream the application hands over (api/sse.py):
        its response says `Connection: close`, and once its head and first line are sent the
        connection goes to the stream hub instead of being finished, closed or kept."""
        environ: dict[str, Any] = {}
        resp = None
        program = None  # a stream to hand over: handed over, or finished here
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            if not conn.is_http2 and self._collects_heads(conn.client):  # plain HTTP/1
                environ[HUB_KEY] = self.stream_hub
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            full = len(self.keepalived_conns) >= self.max_keepalived
            if not self.alive or not self.cfg.keepalive or full:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            program = environ.pop(HANDOVER_KEY, None)
            if program is not None:
                resp.force_close()  # the hub closes it when the stream ends
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                if program is None or not (resp.headers_sent and self.alive):
                    resp.close()  # a stopping worker ends the stream here; its client resumes
            finally:
                request_time = datetime.now() - request_start
                self.log.access(resp, req, environ, request_time)
                if hasattr(respiter, "close"):
                    respiter.close()
            if program is not None and resp.headers_sent and self.alive:
                reads_shut = bool(environ.get(CLOSE_CONNECTION))  # its body was left unread
                self.stream_hub.adopt(conn.sock, program, chunked=bool(resp.chunked),
                                      watch_reads=not reads_shut)  # fmt: skip
                program, conn.handed_over = None, True
                return False
            if resp.should_close():
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent and not conn.handed_over:
                # A response already started: writing a 500 on it would corrupt it.
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            if program is not None:  # not handed over, whatever happened
                program.finish()
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        # Decided after the post_request hook ran: gunicorn's own answer came before it,
        # and would have the unread body drained (read) for a next request.
        return not req.should_close()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.stream_hub.stop()

    # -- closing: lingering on the loop -----------------------------------------------------

    def _linger(self, conn: TConn) -> None:
        """Close after the client has seen the end of the response: half-close, then drop what
        it still sends (a bounded amount, for a bounded time) so that closing with unread
        data does not reset the connection under the response. Off the main loop's thread
        (never the case in gthread) gunicorn's own blocking close is used."""
        sock = conn.sock
        if threading.current_thread() is not threading.main_thread():
            util.close_graceful(sock, LINGER_SECONDS, LINGER_BYTES)
            return
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            entry = _Linger(sock, time.monotonic() + LINGER_SECONDS)
            self.poller.register(sock, selectors.EVENT_READ, partial(self._on_linger_bytes, entry))
        except (OSError, KeyError, ValueError):
            util.close(sock)
            return
        self._lingering[sock] = entry
        self._on_linger_bytes(entry, sock)

    def _on_linger_bytes(self, entry: _Linger, sock: socket.socket) -> None:
        try:
            data = sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        entry.drained += len(data)
        if not data or entry.drained >= LINGER_BYTES:
            self._end_linger(entry)

    def _end_linger(self, entry: _Linger) -> None:
        self._lingering.pop(entry.sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(entry.sock)
        util.close(entry.sock)

    def _expire_lingering(self) -> None:
        now = time.monotonic()
        for entry in list(self._lingering.values()):
            if entry.deadline > now:
                break
            self._end_linger(entry)

    # gunicorn's loop calls this about once a second, also while it stops.
    def murder_pending(self) -> None:
        super().murder_pending()
        self._expire_heads()
        self._expire_lingering()
