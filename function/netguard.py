"""Where the worker may send a webhook: the address policy, the one DNS look-up, and a pinned connection.

A callback URL comes from an untrusted job message, so it could aim the worker at its own cluster
(Redis, the object store, the cloud metadata service). `vet_url` resolves the host once, refuses the URL
unless every address it resolves to passes `refusal`, and returns a `Target` naming the one address to use.
`pinned_session` then connects to exactly that address (the Host header, TLS SNI and certificate check
still use the name), so a second DNS answer can not move the request elsewhere (DNS rebinding).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import parse_url

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int, float], list[IPAddress]]

SCHEMES = {"http": 80, "https": 443}
MAX_URL_CHARS = 2048


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# Never a webhook target, whatever the settings (only CALLBACK_ALLOW_HOSTS lets a named host through).
# Checked in this order; the first match names the refusal.
ALWAYS_BLOCKED: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("cloud metadata", _nets("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32")),
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("carrier-grade NAT", _nets("100.64.0.0/10")),
    (
        "reserved",
        _nets(
            "240.0.0.0/4",  # future use, and 255.255.255.255 broadcast
            "192.0.0.0/24",  # IETF protocol assignments
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",  # documentation
            "198.18.0.0/15",  # benchmarking
            "192.88.99.0/24",  # 6to4 relay anycast
            "::/96",  # deprecated IPv4-compatible IPv6
            "::ffff:0:0:0/96",  # SIIT IPv4-translated
            "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
            "100::/64",  # discard
            "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, benchmarking)
            "2001:db8::/32",
            "3fff::/20",  # documentation
            "5f00::/16",  # segment routing SIDs
            "fec0::/10",  # deprecated site-local
        ),
    ),
)
# Internal networks: refused only with CALLBACK_PRIVATE=deny (an in-cluster receiver is a normal set-up).
PRIVATE = _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
# IPv6 forms that carry an IPv4 address: the embedded address is judged instead.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


class Refused(Exception):
    """The callback URL may not be used; the message says why (safe to log: no credentials)."""


def embedded_ipv4(ip: IPAddress) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, NAT64 or 6to4 form), with the form's name."""
    if ip.version != 6:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    return None


def refusal(ip: IPAddress, private_allowed: bool) -> str | None:
    """Why `ip` may not be a webhook target, or None when it may."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        form, v4 = inner
        why = refusal(v4, private_allowed)
        return f"{why} ({form} form of {v4})" if why else None
    for category, networks in ALWAYS_BLOCKED:
        if any(ip in net for net in networks):
            return category
    if any(ip in net for net in PRIVATE):
        return None if private_allowed else "private (CALLBACK_PRIVATE=deny)"
    if ip.version == 6 and ip not in GLOBAL_UNICAST_V6:
        return "reserved"
    return None


def resolve(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order; an IP literal resolves to itself.

    getaddrinfo has no timeout of its own, so it runs on a daemon thread that is abandoned after `timeout_s`.
    """
    box: dict[str, Any] = {}

    def look_up() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as err:
            box["error"] = err

    thread = threading.Thread(target=look_up, name="stemworker-dns", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise Refused(f"resolving {host!r} took over {timeout_s:g} s")
    if "error" in box:
        raise Refused(f"cannot resolve {host!r}: {box['error']}")
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in box["infos"]:
        if family in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
    if not addresses:
        raise Refused(f"{host!r} has no IPv4 or IPv6 address")
    return addresses


def normalize_host(host: str) -> str:
    """A host as the allow-list compares it: lower case, no IPv6 brackets, no trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class Target:
    """A vetted callback: the URL to send (as requests prepared it), its host and port, and the address
    to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress


def vet_url(
    url: str,
    *,
    private_allowed: bool,
    allow_hosts: Iterable[str] = (),
    resolve_timeout_s: float = 5.0,
    resolver: Resolver = resolve,
) -> Target:
    """Check a callback URL and pick the address to connect to; raises Refused with the reason.

    Refused: a scheme other than http/https, a URL over MAX_URL_CHARS or with control characters, spaces or
    backslashes, no host, a host that does not resolve, and a host with any address that `refusal` rejects
    (a name that mixes public and internal answers is refused as a whole). A host listed in `allow_hosts`
    skips the address policy but is still resolved once and pinned; so does a host whose resolved addresses
    all fall inside one network (CIDR form, e.g. `10.0.0.0/8` or `127.0.0.1/32`) listed there.
    """
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise Refused(f"URL must be a string of at most {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ch in "\\\x7f" for ch in url):
        raise Refused("URL contains whitespace, control characters or backslashes")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in SCHEMES:
        raise Refused(f"scheme {scheme!r} is not http or https")
    try:
        prepared = requests.Request("POST", url).prepare()
        parts = parse_url(prepared.url or "")
    except (requests.RequestException, ValueError) as err:
        raise Refused(f"URL is malformed: {type(err).__name__}") from None
    host = normalize_host(parts.host or "")
    if not host:
        raise Refused("URL has no host")
    port = parts.port or SCHEMES[scheme]
    addresses = resolver(host, port, resolve_timeout_s)
    if not _allowed_host(host, allow_hosts) and not inside_allowed_network(addresses, allow_hosts):
        for ip in addresses:
            why = refusal(ip, private_allowed)
            if why:
                shown = host if host == str(ip) else f"{host} ({ip})"
                raise Refused(f"address {shown} is {why}")
    return Target(url=prepared.url or url, scheme=scheme, host=host, port=port, address=addresses[0])


def _allowed_host(host: str, allow_hosts: Iterable[str]) -> bool:
    wanted = {normalize_host(entry) for entry in allow_hosts}
    if host in wanted:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in wanted:
        try:
            if ipaddress.ip_address(entry) == ip:
                return True
        except ValueError:
            continue
    return False


def allowed_networks(allow_hosts: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The entries of `allow_hosts` in CIDR form (those with a '/'); Settings has already refused bad ones."""
    networks = []
    for entry in allow_hosts:
        if "/" in entry:
            try:
                networks.append(ipaddress.ip_network(entry.strip().strip("[]")))
            except ValueError:
                continue
    return networks


def inside_allowed_network(addresses: list[IPAddress], allow_hosts: Iterable[str]) -> bool:
    """Whether one allowed network holds every address (an IPv4-mapped IPv6 address counts as its IPv4 one):
    a name with any answer outside it is judged by the address policy as usual."""

    def plain(ip: IPAddress) -> IPAddress:
        mapped = getattr(ip, "ipv4_mapped", None)
        return mapped if mapped is not None else ip

    return bool(addresses) and any(
        all(plain(ip) in network for ip in addresses) for network in allowed_networks(allow_hosts)
    )


def _tracked_pools(opened: list[HTTPConnection]) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pool classes whose connections add themselves to `opened` when they connect."""

    class TrackedHTTPConnection(HTTPConnection):
        def connect(self) -> None:
            opened.append(self)
            super().connect()

    class TrackedHTTPSConnection(HTTPSConnection):
        def connect(self) -> None:
            opened.append(self)
            super().connect()

    class TrackedHTTPPool(HTTPConnectionPool):
        ConnectionCls = TrackedHTTPConnection

    class TrackedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = TrackedHTTPSConnection

    return {"http": TrackedHTTPPool, "https": TrackedHTTPSPool}


class PinnedAdapter(HTTPAdapter):
    """A transport that connects to the vetted address only, whatever the URL's host resolves to now.

    The Host header carries the URL's host; for https the TLS SNI and the certificate check use it too.
    A request for any other host is refused (the adapter serves one vetted target).
    """

    def __init__(self, target: Target) -> None:
        self.opened: list[HTTPConnection] = []  # every connection made, for `cut` (before super() builds pools)
        super().__init__(max_retries=0)
        self.target = target

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _tracked_pools(self.opened)

    def cut(self) -> None:
        """Shut down every socket this adapter opened, from any thread: a request blocked reading from a peer that
        trickles or stalls fails at once. (During a TLS handshake there is no socket to reach; the caller's
        wall-clock wait still ends on time.)"""
        for connection in list(self.opened):
            sock = getattr(connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        target = self.target
        if normalize_host(str(host_params["host"])) != target.host or host_params["scheme"] != target.scheme:
            raise ValueError("request does not match the vetted callback target")
        default_port = SCHEMES[target.scheme]
        name = f"[{target.host}]" if ":" in target.host else target.host
        request.headers["Host"] = name if target.port == default_port else f"{name}:{target.port}"
        if target.scheme == "https":
            # urllib3's pool takes these TLS arguments; the stub's TypedDict lists only those requests sets itself.
            pool_kwargs["server_hostname"] = target.host  # type: ignore[typeddict-unknown-key]
            pool_kwargs["assert_hostname"] = target.host  # type: ignore[typeddict-unknown-key]
        host_params["host"] = f"[{target.address}]" if target.address.version == 6 else str(target.address)
        host_params["port"] = target.port
        return host_params, pool_kwargs


def pinned_session(target: Target) -> requests.Session:
    """A session that reaches only `target.address`: no proxies or .netrc from the environment; a redirect to
    another host could not be sent through it (callers also pass allow_redirects=False)."""
    session = requests.Session()
    session.trust_env = False
    adapter = PinnedAdapter(target)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
