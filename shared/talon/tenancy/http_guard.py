"""HTTP clients that enforce the egress policy when they connect (adapter: httpx for the
openai client, httpx2 for the MCP SDK).

Every request, redirects included, has its URL checked; every connection resolves the host
itself, refuses it if any address it resolves to is denied, and connects to a checked address,
so a name cannot pass the check with one address and connect to another (DNS rebinding). TLS
still verifies the certificate against the host name (httpcore sends the origin's name as SNI
and checks it, whatever address the socket went to). Proxies from the environment are ignored:
a proxy would make the connection on the policy's behalf, unchecked.

The transports replace the connection pool httpx builds with one that uses the guarded
network backend (`HTTPTransport` takes no backend argument); httpx and httpx2 are pinned to
the minor versions this was tested with.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpcore2
import httpx
import httpx2

from talon.tenancy.egress import EgressDenied, EgressPolicy

_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


# One TLS context per process and library: building one loads the CA bundle (~20 ms of CPU),
# and every MCP call builds a client (twice over: the transport's own pool, then ours). A
# context only verifies and holds no session another client could resume (client-side
# session caching is off unless asked for), so sharing it shares nothing between tenants.
@functools.cache
def _tls() -> ssl.SSLContext:
    return _shared(httpx.create_ssl_context(trust_env=False))


@functools.cache
def _async_tls() -> ssl.SSLContext:
    return _shared(httpx2.create_ssl_context(trust_env=False))


class _SharedContext(ssl.SSLContext):
    """httpcore sets ALPN on its context for every connection; in OpenSSL that replaces a
    buffer which another thread's handshake may be copying (CPython lets go of the GIL
    there). The value never changes here, so it is set once, before the context is shared,
    and setting the same value again does nothing."""

    _alpn: list[str] | None = None

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        protocols = list(alpn_protocols)
        if protocols != self._alpn:
            super().set_alpn_protocols(protocols)
            self._alpn = protocols


def _shared(context: ssl.SSLContext) -> ssl.SSLContext:
    context.__class__ = _SharedContext  # the library's defaults, kept
    context.set_alpn_protocols(["http/1.1"])  # what httpcore sets without HTTP/2
    return context


def _checked_addresses(policy: EgressPolicy, host: str, infos: Iterable[Any]) -> list[str]:
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise EgressDenied(f"{host} does not resolve")
    for address in addresses:
        try:
            policy.check_address(address.split("%")[0])  # an IPv6 zone id is not part of it
        except EgressDenied as exc:
            raise EgressDenied(f"{host} resolves to a denied address: {exc}") from None
    return addresses


def _resolve(policy: EgressPolicy, host: str, port: int) -> list[str]:
    policy.check_host(host)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    return _checked_addresses(policy, host, infos)


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        failure: Exception | None = None
        for address in _resolve(self._policy, host, port):
            try:
                return _Connection(self._inner.connect_tcp(address, port, timeout, local_address,
                                                           socket_options))  # fmt: skip
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"cannot connect to {host}")

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise EgressDenied("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Connection(httpcore.NetworkStream):
    """A connection whose reads can be held to a deadline for a while (`reads_within`)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        # (thread, monotonic deadline): only that thread's reads are held to it. The pool can
        # hand the connection to another thread's request the moment a drained response ends,
        # before the draining thread has left `reads_within`.
        self.deadline: tuple[int, float] | None = None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        held = self.deadline
        if held is not None and held[0] == threading.get_ident():
            left = held[1] - time.monotonic()
            if left <= 0:
                raise httpcore.ReadTimeout("the read's deadline has passed")
            timeout = left if timeout is None else min(timeout, left)
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Connection(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


@contextmanager
def reads_within(response: Any, seconds: float) -> Iterator[bool]:
    """Holds the reads of `response`'s connection to `seconds` from now, so that reading what
    is left of a response cannot outlast them (a read past the deadline raises ReadTimeout,
    and the connection is dropped). Yields False when the connection is not a guarded one
    (then nothing bounds its reads: the caller should not wait on it)."""
    connection = response.extensions.get("network_stream")
    if not isinstance(connection, _Connection):
        yield False
        return
    held = (threading.get_ident(), time.monotonic() + seconds)
    connection.deadline = held
    try:
        yield True
    finally:
        if connection.deadline is held:  # not another thread's since
            connection.deadline = None


class GuardedTransport(httpx.HTTPTransport):
    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__(verify=_tls(), trust_env=False, limits=_LIMITS)
        self._policy = policy
        self._pool = httpcore.ConnectionPool(
            ssl_context=_tls(),
            max_connections=_LIMITS.max_connections,
            max_keepalive_connections=_LIMITS.max_keepalive_connections,
            keepalive_expiry=_LIMITS.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._policy.check_url(str(request.url))
        return super().handle_request(request)


class _AsyncGuardedBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        self._policy.check_host(host)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise httpcore2.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failure: Exception | None = None
        for address in _checked_addresses(self._policy, host, infos):
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address,
                                                     socket_options)  # fmt: skip
            except httpcore2.ConnectError as exc:
                failure = exc
        raise failure or httpcore2.ConnectError(f"cannot connect to {host}")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        raise EgressDenied("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class AsyncGuardedTransport(httpx2.AsyncHTTPTransport):
    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__(verify=_async_tls(), trust_env=False)
        self._policy = policy
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=_async_tls(),
            max_connections=_LIMITS.max_connections,
            max_keepalive_connections=_LIMITS.max_keepalive_connections,
            keepalive_expiry=_LIMITS.keepalive_expiry,
            network_backend=_AsyncGuardedBackend(policy),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self._policy.check_url(str(request.url))
        return await super().handle_async_request(request)


class _SetCookies(httpx.Cookies):
    """Cookies that read a response only when it sets some, as httpx2 does: httpx 0.28
    reads every response, building a urllib request from it to find none (5% of a
    worker's CPU per turn with one model call, in `bench/turns.py`)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers or "set-cookie2" in response.headers:
            super().extract_cookies(response)


class _GuardedClient(httpx.Client):
    """An httpx client whose cookies are `_SetCookies` (through its public `cookies`
    property, which is all httpx itself uses)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._set_cookies = _SetCookies(super().cookies)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._set_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:  # what httpx.Cookies() takes
        self._set_cookies = _SetCookies(cookies)


def guarded_client(policy: EgressPolicy, **kwargs: Any) -> httpx.Client:
    return _GuardedClient(transport=GuardedTransport(policy), trust_env=False, **kwargs)


def guarded_async_client(policy: EgressPolicy, **kwargs: Any) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=AsyncGuardedTransport(policy), trust_env=False, **kwargs)
