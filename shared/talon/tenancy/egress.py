"""The egress policy: where MCP server URLs and model base URLs may point.

Checked twice: when a manifest is applied (the URL as written: scheme, host, literal
addresses) and when the worker connects (every address the host resolves to, for every
request including redirects), so a name that resolves to a metadata or private address later
(DNS rebinding) is refused as well. Link-local addresses, where cloud metadata servers live,
are refused unless a CIDR in `allowedCidrs` names them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from talon.config import EgressSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressDenied(Exception):
    """A URL or address the policy refuses; the message says why."""


@dataclass(frozen=True)
class EgressPolicy:
    schemes: frozenset[str] = frozenset({"https"})
    allow_loopback: bool = False
    allow_private: bool = False
    hosts: tuple[str, ...] = ()
    cidrs: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, settings: EgressSettings) -> EgressPolicy:
        return cls(
            frozenset(s.lower() for s in settings.allowed_schemes),
            settings.allow_loopback,
            settings.allow_private,
            tuple(h.lower().rstrip(".") for h in settings.allowed_hosts),
            tuple(ipaddress.ip_network(c, strict=False) for c in settings.allowed_cidrs),
        )

    def check_url(self, url: str) -> None:
        """The URL as written: scheme, host list, and the address if the host is one."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").rstrip(".")
            parts.port  # noqa: B018 - raises ValueError on a port out of range
        except ValueError as exc:
            raise EgressDenied(f"not a valid URL ({exc})") from exc
        if parts.scheme.lower() not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            raise EgressDenied(f"scheme {parts.scheme!r} is not allowed (allowed: {allowed})")
        if not host:
            raise EgressDenied("the URL has no host")
        if parts.username or parts.password:
            raise EgressDenied("credentials in the URL are not allowed; use headers")
        self.check_host(host)
        address = _literal_address(host)
        if address is not None:
            self.check_address(address)

    def check_host(self, host: str) -> None:
        host = host.lower().rstrip(".")
        if self.hosts and not any(_host_matches(host, pattern) for pattern in self.hosts):
            raise EgressDenied(f"host {host!r} is not in the allowed hosts")

    def check_address(self, address: IPAddress | str) -> None:
        """One address a host resolved to (or a literal one)."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is the metadata server too
        if any(ip in network for network in self.cidrs):
            return
        if ip.is_link_local:
            raise EgressDenied(f"{ip} is link-local (cloud metadata lives there)")
        if ip.is_loopback:
            if not self.allow_loopback:
                raise EgressDenied(f"{ip} is a loopback address")
            return
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            raise EgressDenied(f"{ip} is not a unicast address")
        if not ip.is_global and not self.allow_private:
            raise EgressDenied(f"{ip} is a private address")


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == pattern
