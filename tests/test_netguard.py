"""The webhook address policy, URL vetting, and the pinned transport (real sockets on loopback)."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from function import netguard
from function.netguard import Refused, Target, pinned_session, refusal, vet_url

BLOCKED_ALWAYS = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("169.254.169.254", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("169.254.10.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("255.255.255.255", "reserved"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.10", "reserved"),
    ("198.18.0.1", "reserved"),
    ("2001:db8::1", "reserved"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "reserved"),  # Teredo
    ("::127.0.0.1", "reserved"),  # deprecated IPv4-compatible
    ("4000::1", "reserved"),  # outside 2000::/3
    ("::ffff:127.0.0.1", "loopback (IPv4-mapped form of 127.0.0.1)"),
    ("::ffff:169.254.169.254", "cloud metadata (IPv4-mapped form of 169.254.169.254)"),
    ("64:ff9b::7f00:1", "loopback (NAT64 form of 127.0.0.1)"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata (NAT64 form of 169.254.169.254)"),
    ("2002:7f00:1::1", "loopback (6to4 form of 127.0.0.1)"),
    ("2002:a9fe:a9fe::", "cloud metadata (6to4 form of 169.254.169.254)"),
    ("::ffff:100.64.0.1", "carrier-grade NAT (IPv4-mapped form of 100.64.0.1)"),
]

PRIVATE = [
    "10.0.0.1",
    "172.16.5.4",
    "172.31.255.255",
    "192.168.1.1",
    "fd12:3456::1",
    "::ffff:10.1.2.3",
    "64:ff9b::a00:1",
    "2002:c0a8:101::1",
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.32.0.1",
    "100.128.0.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "why"), BLOCKED_ALWAYS)
@pytest.mark.parametrize("private_allowed", [True, False])
def test_always_blocked(address: str, why: str, private_allowed: bool) -> None:
    assert refusal(ipaddress.ip_address(address), private_allowed) == why


@pytest.mark.parametrize("address", PRIVATE)
def test_private_blocked_only_on_deny(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert refusal(ip, private_allowed=True) is None
    assert refusal(ip, private_allowed=False).startswith("private (CALLBACK_PRIVATE=deny)")


@pytest.mark.parametrize("address", PUBLIC)
@pytest.mark.parametrize("private_allowed", [True, False])
def test_public_allowed(address: str, private_allowed: bool) -> None:
    assert refusal(ipaddress.ip_address(address), private_allowed) is None


# URLs the real system resolver answers offline (IP literals in every form inet_aton accepts, and localhost).
REFUSED_URLS = [
    ("http://127.0.0.1:9/hook", "address 127.0.0.1 is loopback"),
    ("http://localhost:9/hook", "is loopback"),
    ("http://LOCALHOST./hook", "is loopback"),
    ("http://2130706433/hook", "address 2130706433 (127.0.0.1) is loopback"),  # decimal
    ("http://0x7f.1/hook", "(127.0.0.1) is loopback"),  # hex, short form
    ("http://0177.0.0.1/hook", "(127.0.0.1) is loopback"),  # octal
    ("http://127.1/hook", "(127.0.0.1) is loopback"),
    ("http://[::1]:9/hook", "address ::1 is loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback (IPv4-mapped form of 127.0.0.1)"),
    ("http://[::ffff:7f00:1]/hook", "loopback (IPv4-mapped form of 127.0.0.1)"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://0.0.0.0:8080/", "unspecified"),
    ("http://100.64.1.1/", "carrier-grade NAT"),
    ("http://user:pw@127.0.0.1/", "loopback"),
    ("file:///etc/passwd", "scheme 'file' is not http or https"),
    ("ftp://example.com/x", "scheme 'ftp' is not http or https"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme 'gopher' is not http or https"),
    ("javascript:alert(1)", "scheme 'javascript' is not http or https"),
    ("//example.com/x", "scheme '' is not http or https"),
    ("http:///nohost", "URL is malformed"),
    ("http://exa mple.com/", "whitespace"),
    ("http://example.com\\@127.0.0.1/", "backslashes"),
    ("http://example.com/\r\nX-Injected: 1", "control characters"),
    ("http://" + "a" * 3000 + ".com/", "at most 2048 characters"),
    ("http://no-such-host.invalid/hook", "cannot resolve 'no-such-host.invalid'"),
]


@pytest.mark.parametrize(("url", "phrase"), REFUSED_URLS)
def test_vet_url_refuses(url: str, phrase: str) -> None:
    with pytest.raises(Refused) as caught:
        vet_url(url, private_allowed=True, resolve_timeout_s=5)
    assert phrase in str(caught.value)
    assert "pw" not in str(caught.value)


def test_private_literal_depends_on_setting() -> None:
    assert str(vet_url("http://10.1.2.3:8080/x", private_allowed=True).address) == "10.1.2.3"
    with pytest.raises(Refused, match=r"address 10\.1\.2\.3 is private \(CALLBACK_PRIVATE=deny\)"):
        vet_url("http://10.1.2.3:8080/x", private_allowed=False)


def test_allow_hosts_lets_a_named_host_through_and_pins_it() -> None:
    target = vet_url("http://LocalHost:8080/x", private_allowed=False, allow_hosts=("localhost",))
    assert (target.host, target.port, target.scheme) == ("localhost", 8080, "http")
    assert target.address.is_loopback
    literal = vet_url("https://[::1]/x", private_allowed=False, allow_hosts=("[0:0::1]",))
    assert (str(literal.address), literal.port) == ("::1", 443)
    # 127.0.0.1 is allowed by name only: another spelling of the same address is judged by the policy.
    with pytest.raises(Refused, match="loopback"):
        vet_url("http://2130706433/x", private_allowed=True, allow_hosts=("127.0.0.1",))


def fixed(*answers: str):
    """A resolver that answers every name with `answers` (the real one is used where the test says so)."""
    return lambda host, port, timeout_s: [ipaddress.ip_address(answer) for answer in answers]


@pytest.mark.parametrize(
    ("answers", "allow"),
    [
        (["127.0.0.1"], "127.0.0.1/32"),
        (["10.1.2.3", "10.200.0.9"], "10.0.0.0/8"),
        (["fd12::5"], "fd00::/8"),
        (["::ffff:10.0.0.7"], "10.0.0.0/8"),  # IPv4-mapped counts as its IPv4 address
        (["169.254.169.254"], "169.254.169.254/32"),  # an explicit entry is the operator's word, as a host name is
    ],
)
def test_a_network_entry_admits_a_host_whose_addresses_all_fall_inside(answers: list[str], allow: str) -> None:
    with pytest.raises(Refused):
        vet_url("http://hook.internal:8080/x", private_allowed=False, resolver=fixed(*answers))
    target = vet_url(
        "http://hook.internal:8080/x",
        private_allowed=False,
        allow_hosts=("example.org", allow),
        resolver=fixed(*answers),
    )
    assert (target.host, target.address) == ("hook.internal", ipaddress.ip_address(answers[0]))


@pytest.mark.parametrize(
    ("answers", "allow", "private_allowed", "why"),
    [
        (["127.0.0.1", "::1"], ("127.0.0.1/32",), True, "is loopback"),  # one answer outside: the policy judges
        (["127.0.0.2"], ("127.0.0.1/32",), True, "loopback"),
        (["10.0.0.1", "127.0.0.1"], ("10.0.0.0/8",), True, "loopback"),
        (["10.0.0.1", "192.168.0.1"], ("10.0.0.0/8", "192.168.0.0/16"), False, "private"),  # all inside ONE network
    ],
)
def test_a_network_entry_never_admits_a_host_with_an_address_outside_it(answers, allow, private_allowed, why) -> None:
    with pytest.raises(Refused, match=why):
        vet_url("http://hook.internal/x", private_allowed=private_allowed, allow_hosts=allow, resolver=fixed(*answers))


def test_allowing_loopback_by_network_admits_localhost_when_it_resolves_only_there() -> None:
    resolved = netguard.resolve("localhost", 80, 5)
    inside = all(ip == ipaddress.ip_address("127.0.0.1") for ip in resolved)
    if inside:
        target = vet_url("http://localhost:8080/hook", private_allowed=False, allow_hosts=("127.0.0.1/32",))
        assert str(target.address) == "127.0.0.1" and target.host == "localhost"
    else:  # a resolver that also answers ::1: the entry does not cover every address, so loopback is refused
        with pytest.raises(Refused, match="loopback"):
            vet_url("http://localhost:8080/hook", private_allowed=False, allow_hosts=("127.0.0.1/32",))
    # The decimal spelling of 127.0.0.1 resolves inside the network too (a network entry is about addresses).
    assert str(vet_url("http://2130706433/x", private_allowed=True, allow_hosts=("127.0.0.1/32",)).address) == (
        "127.0.0.1"
    )


def test_resolve_returns_every_address_of_localhost() -> None:
    addresses = netguard.resolve("localhost", 80, 5)
    assert addresses and all(ip.is_loopback for ip in addresses)


# --- the pinned transport -----------------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append({"host": self.headers.get("Host", ""), "path": self.path})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(address: str, tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server_class = type("Server", (http.server.ThreadingHTTPServer,), {})
    if ":" in address:
        server_class.address_family = socket.AF_INET6
    server = server_class((address, 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain_server() -> Iterator[tuple[int, list[dict[str, str]]]]:
    yield from _serve("127.0.0.1")


@pytest.fixture
def plain_server_v6() -> Iterator[tuple[int, list[dict[str, str]]]]:
    yield from _serve("::1")


def test_pinned_session_connects_to_the_vetted_address_not_to_dns(plain_server) -> None:
    port, seen = plain_server
    # `.invalid` never resolves (RFC 2606), so reaching the server proves the socket went to the pinned address.
    target = Target(
        url=f"http://rebind.invalid:{port}/hook",
        scheme="http",
        host="rebind.invalid",
        port=port,
        address=ipaddress.ip_address("127.0.0.1"),
    )
    with pinned_session(target) as session:
        response = session.post(target.url, data=b"{}", timeout=5)
    assert response.status_code == 204
    assert seen == [{"host": f"rebind.invalid:{port}", "path": "/hook"}]


def test_pinned_session_over_ipv6(plain_server_v6) -> None:
    port, seen = plain_server_v6
    target = Target(
        url=f"http://v6.invalid:{port}/x",
        scheme="http",
        host="v6.invalid",
        port=port,
        address=ipaddress.ip_address("::1"),
    )
    with pinned_session(target) as session:
        assert session.post(target.url, data=b"{}", timeout=5).status_code == 204
    assert seen == [{"host": f"v6.invalid:{port}", "path": "/x"}]


def test_pinned_session_refuses_any_other_host(plain_server) -> None:
    port, seen = plain_server
    target = Target(
        url=f"http://a.invalid:{port}/",
        scheme="http",
        host="a.invalid",
        port=port,
        address=ipaddress.ip_address("127.0.0.1"),
    )
    with pinned_session(target) as session, pytest.raises(requests.exceptions.InvalidURL):
        session.post(f"http://b.invalid:{port}/", data=b"{}", timeout=5)
    assert seen == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for `hooks.test`, made by the openssl command line tool."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=hooks.test",
            "-addext",
            "subjectAltName=DNS:hooks.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(certificate) -> Iterator[tuple[int, list[dict[str, str]]]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    yield from _serve("127.0.0.1", context)


def test_https_pinned_keeps_sni_and_certificate_check_on_the_name(tls_server, certificate) -> None:
    port, seen = tls_server
    target = Target(
        url=f"https://hooks.test:{port}/tls",
        scheme="https",
        host="hooks.test",
        port=port,
        address=ipaddress.ip_address("127.0.0.1"),
    )
    with pinned_session(target) as session:
        response = session.post(target.url, data=b"{}", timeout=5, verify=str(certificate[0]))
    assert response.status_code == 204
    assert seen == [{"host": f"hooks.test:{port}", "path": "/tls"}]


def test_https_certificate_for_another_name_is_refused(tls_server, certificate) -> None:
    port, seen = tls_server
    target = Target(
        url=f"https://other.test:{port}/tls",
        scheme="https",
        host="other.test",
        port=port,
        address=ipaddress.ip_address("127.0.0.1"),
    )
    with pinned_session(target) as session, pytest.raises(requests.exceptions.SSLError):
        session.post(target.url, data=b"{}", timeout=5, verify=str(certificate[0]))
    assert seen == []
