"""Worker liveness tied to a PostgreSQL session: a process is alive while its lock is held.

Each worker process holds a session-level advisory lock, keyed on a hash of its owner id, on
one dedicated connection that runs nothing else. PostgreSQL releases the lock the moment that
connection's backend exits, and the backend exits as soon as it reads end-of-file from its
socket: a SIGKILLed or crashed process's kernel closes the socket, so its lock is gone within
milliseconds, with no heartbeat written anywhere (a turn that does not crash pays nothing).

Whoever finds a lease or a claimed queue row held by another owner asks `owner_gone_sql`:
`pg_try_advisory_xact_lock_shared` on the owner's key succeeds exactly when no session holds
it exclusively. Shared, so any number of claimers can ask about the same dead owner at once
(an exclusive try would make one claimer's probe look, to the next, like a live owner); held
only until the claimer's transaction ends.

What this does not cover, and what covers it:
- a process that is alive but hung keeps its lock: its leases expire as before;
- a network partition: the server drops the session after its TCP keepalives fail (this
  connection sets them to ~11 s); until then the lease holds, as before;
- a pooler that shares server sessions between clients (PgBouncer in transaction or
  statement mode) cannot hold a session lock for one client: the lock connection must be a
  direct session (the Cloud SQL connector's connections are);
- a process whose lock connection drops while it lives: the lock is gone, so its turns are
  taken over at once; the fencing token already refuses its late writes, and it holds no lock
  again until it reconnects (its claims wait for that, see `held`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from talon.backoff import backoff_delay

log = logging.getLogger(__name__)

# An owner's key is a 64-bit hash of its id (hashtextextended, with a seed of our own): two
# live workers never share one in practice (a 32-bit hash would, in a large enough fleet,
# leave one of them unable to lock). 'taln' in ASCII.
KEY_SEED = 0x74616C6E
# The lock connection's application_name, so operators (and tests) can tell it apart.
APPLICATION_NAME = "talon-liveness"
_KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}


def owner_key_sql(owner: str) -> str:
    """SQL for `owner`'s advisory lock key (`owner`: a column or a placeholder)."""
    return f"hashtextextended({owner}, {KEY_SEED})"


def owner_gone_sql(owner: str) -> str:
    """SQL, true when no live session holds `owner`'s lock (`owner`: a column or a
    placeholder). It takes a shared transaction-level lock when true: harmless, as only the
    owner ever asks for that key exclusively."""
    return f"pg_try_advisory_xact_lock_shared({owner_key_sql(owner)})"


class OwnerLock:
    """Holds `owner`'s lock on a dedicated connection from `connect`, reconnecting (and
    re-locking) with backoff when the connection is lost, until `close()` or until
    `closed()` turns true (checked every `poll` seconds)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        owner: str,
        *,
        closed: Callable[[], bool] = lambda: False,
        poll: float = 1.0,
    ) -> None:
        self.owner = owner
        self._connect = connect
        self._closed = closed
        self._poll = poll
        self._stop = threading.Event()
        self._held = threading.Event()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="talon-liveness", daemon=True)
        self._thread.start()

    @property
    def held(self) -> bool:
        """True while the lock is held, as far as this process knows (a connection lost a
        moment ago may not have been noticed yet: the fencing token covers that window)."""
        return self._held.is_set()

    def wait_held(self, timeout: float) -> bool:
        return self._held.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def _done(self) -> bool:
        return self._stop.is_set() or self._closed()

    def _run(self) -> None:
        failures = 0
        while not self._done():
            connection = None
            try:
                connection = self._connect()
                connection.autocommit = True
                cursor = connection.cursor()
                if getattr(connection, "_usock", None) is None:  # see notify.py
                    raise RuntimeError("this pg8000 does not expose its socket; pin 1.31.x")
                sock: socket.socket = connection._usock
                if sock.family != socket.AF_UNIX:
                    # The server drops a partitioned session (and so the lock) in ~11 s.
                    for name, value in _KEEPALIVE.items():
                        cursor.execute(f"SET {name} = {value}")
                    _client_keepalive(sock)
                cursor.execute(f"SET application_name = '{APPLICATION_NAME}'")
                # Not a blocking lock: a waiting exclusive request makes every probe of the
                # key fail, so this owner would look alive while it holds nothing. The key is
                # busy only while claimers probe it (after this connection was lost: they
                # may be taking our turns over), so try again shortly.
                cursor.execute(f"SELECT pg_try_advisory_lock({owner_key_sql('%s')})",
                               (self.owner,))  # fmt: skip
                if not cursor.fetchall()[0][0]:
                    raise _Busy("the key is held by a claimer probing it")
                self._socket = sock
                self._held.set()
                failures = 0
                self._watch(sock)
                if not self._done():
                    log.warning("liveness lock connection of %s lost; re-locking", self.owner)
            except Exception as exc:
                if not self._done():
                    log.warning("liveness lock of %s unavailable: %s", self.owner, exc)
            finally:
                self._held.clear()
                self._socket = None
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()
            if not self._done():
                failures += 1
                self._stop.wait(backoff_delay(failures, initial=0.1, maximum=2.0))

    def _watch(self, sock: socket.socket) -> None:
        """Return when the connection closes (or we are told to stop). The server sends
        nothing on an idle session but the odd notice, which is read and dropped: the
        connection is never used for a query again."""
        sock.settimeout(self._poll)
        while not self._done():
            try:
                if not sock.recv(4096):
                    return
            except TimeoutError:
                continue
            except OSError:
                return


class _Busy(Exception):
    pass


def _client_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
