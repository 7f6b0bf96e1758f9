"""Which URLs the server may call for a user (webhooks, imports): by default no private or metadata addresses.

A webhook URL makes the server send a POST wherever the user says, from inside its network; without a rule
that is a server-side request forgery into ``127.0.0.1``, the LAN or a cloud metadata service
(``169.254.169.254``). ``UrlPolicy`` refuses, by default, every address that is not globally routable
(``ipaddress``'s ``is_global``: loopback, private, link-local, carrier-grade NAT, reserved, unspecified) and
multicast; the server's admin may allow all of them (``allow_private``, for a LAN deployment and the tests)
or some (``allowed_hosts``: host names, addresses or networks).

The rule is applied twice: ``check_url`` when an endpoint is saved (a 400 naming ``url``), and at connect
time by ``guarded_client``, whose network backend resolves the host itself, vets every address and connects
to a vetted one, so a name whose DNS changes after it was saved (rebinding) cannot reach a refused address
either. Redirects are never followed. Written by hand because neither httpx nor httpcore has such a hook
beyond the network backend this plugs into.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from tunery.domain.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to; socket.getaddrinfo by default, replaced in tests
Resolver = Callable[[str, int], list[str]]
DEFAULT_PORTS = {"http": 80, "https": 443}


class BlockedAddress(httpcore.ConnectError):
    """A connection refused by the policy (httpx reports it as a ``ConnectError`` with this message)."""


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be called (``"a loopback address"`` ...), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_private or not address.is_global:
        return "a private or reserved address"
    return None


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Where outbound calls may go. The default refuses every address that is not public."""

    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()  # host names (exact, case-insensitive), addresses or networks (CIDR)
    setting: str = "TUNERY_WEBHOOKS__ALLOW_PRIVATE_URLS"  # the settings named in refusals, for the admin
    hosts_setting: str = "TUNERY_WEBHOOKS__ALLOWED_HOSTS"

    def _networks(self) -> list[IPNetwork]:
        found: list[IPNetwork] = []
        for entry in self.allowed_hosts:
            try:
                found.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue  # a host name
        return found

    def host_allowed(self, host: str) -> bool:
        """True when every address of ``host`` may be called without looking (allowed all, or by name)."""
        return self.allow_private or host.lower().rstrip(".") in {h.lower().rstrip(".") for h in self.allowed_hosts}

    def address_refusal(self, address: str) -> str | None:
        """Why this address may not be called, or None when it may."""
        parsed = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
        if self.allow_private or any(parsed in network for network in self._networks()):
            return None
        return refusal(parsed)

    def vet(self, host: str, port: int, resolver: Resolver = resolve) -> list[str]:
        """The addresses of ``host`` that may be called; raises BlockedAddress when any of them may not.

        All addresses must pass, not just one: a client (or a later connection) could pick any of them.
        """
        if self.host_allowed(host):
            return [host]
        try:
            addresses = [host] if _is_address(host) else resolver(host, port)
        except OSError as exc:
            raise BlockedAddress(f"the host '{host}' does not resolve ({exc})") from None
        for address in addresses:
            reason = self.address_refusal(address)
            if reason is not None:
                where = f"'{host}' is" if address == host else f"'{host}' resolves to {address},"
                raise BlockedAddress(
                    f"{where} {reason}, which the server does not call (its admin may allow such addresses "
                    f"with {self.setting}=true or by listing the host in {self.hosts_setting})"
                )
        if not addresses:
            raise BlockedAddress(f"the host '{host}' does not resolve")
        return addresses


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_url(url: Any, policy: UrlPolicy, *, param: str = "url", resolver: Resolver = resolve) -> str:
    """The URL, when it is an absolute http(s) URL the policy lets the server call; else InvalidRequest."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise InvalidRequest(f"{param} must be an absolute http:// or https:// URL.", param=param)
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise InvalidRequest(f"{param} has an invalid port.", param=param) from None
    try:
        policy.vet(parts.hostname, port, resolver)
    except BlockedAddress as exc:
        raise InvalidRequest(f"Invalid {param}: {exc}.", param=param, code="invalid_url") from None
    return str(url)


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves the host itself, vets the addresses and connects to the first one that answers."""

    def __init__(self, policy: UrlPolicy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolver = resolver

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._policy.vet(host, port, self._resolver)
        last: Exception | None = None
        for address in addresses:  # TLS keeps the URL's host name for SNI and certificate checks
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last


def guarded_client(
    policy: UrlPolicy,
    *,
    timeout: float,
    headers: dict[str, str],
    resolver: Resolver = resolve,
    follow_redirects: bool = False,
) -> httpx.Client:
    """An httpx client that only connects where ``policy`` allows and ignores proxy variables (a proxy would
    connect for it, unchecked). Redirects are off unless asked for; each hop's connection is vetted too."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx builds its httpcore pool without a way to pass a network backend; this one is the same pool
    # with ours (the defaults of httpx.HTTPTransport otherwise).
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=_GuardedBackend(policy, resolver),
    )
    return httpx.Client(
        transport=transport, timeout=timeout, follow_redirects=follow_redirects, headers=headers, trust_env=False
    )
