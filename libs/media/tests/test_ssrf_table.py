"""The SSRF table, end to end: every bypass form goes through ``fetch_bytes`` with the
production policy (nothing allowed in) and must be refused without a single request
reaching the "internal" server; every legitimate URL must still be fetched.

The network is real: two local HTTP servers, one standing for the internet and one for
an internal service. A lab network backend under httpx stands for routing: it records
every connection httpx opens and sends those to a few public addresses (93.184.216.34
and friends) to the "internet" server; any other address is connected to as it is, so a
URL that slipped through the guard would really reach the internal server. DNS is the
guard's own seam (an injected resolver), which also lets a name answer differently each
time it is asked (DNS rebinding).

Run with ``-s`` to see the counts line, e.g.
``SSRF table: 55 of 55 bypass forms refused`` and ``0 of 15 legitimate URLs refused``.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from urllib.parse import quote

import httpcore
import httpx
import pytest
from media_server import PNG, LocalServer, serve

from pixelbus.media import FetchLimits, MediaError, SsrfPolicy, fetch_bytes
from pixelbus.media.ssrf import IPAddress

STRICT = SsrfPolicy()  # the production policy: no allow_networks
LIMITS = FetchLimits(max_bytes=1_000_000, timeout_s=5, max_redirects=3)
SERVER_FIXTURES = frozenset({"lab"})  # its HTTP servers: the test kit marks the tests `servers`
PUBLIC = "93.184.216.34"
PUBLIC_ADDRESSES = frozenset(
    ip_address(a)
    for a in (PUBLIC, "8.8.8.8", "2606:2800:220:1::1", "::ffff:93.184.216.34", "64:ff9b::5db8:d822")
)


class LabNetwork(httpcore.AsyncNetworkBackend):
    """Real TCP connections; the public lab addresses are routed to the internet server."""

    def __init__(self, internet_port: int) -> None:
        self._real = httpcore.AnyIOBackend()
        self._internet_port = internet_port
        self.connects: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append(host)
        if ip_address(host.strip("[]")) in PUBLIC_ADDRESSES:  # a host name here: ValueError
            host, port = "127.0.0.1", self._internet_port
        return await self._real.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)


class LabTransport(httpx.AsyncHTTPTransport):
    def __init__(self, network: LabNetwork) -> None:
        super().__init__(trust_env=False)
        # httpx has no public hook for the network backend; the pool is its one user.
        self._pool = httpcore.AsyncConnectionPool(network_backend=network)


class Dns:
    """Answers from a table; a name with several answers gives the next one each time it is
    asked (the last one from then on). Remembers every question."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append(host)
        answers = self.table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        asked = self.calls.count(host)
        return [ip_address(a) for a in answers[min(asked, len(answers)) - 1]]


def once(*addresses: str) -> list[list[str]]:
    return [list(addresses)]


DNS_TABLE: dict[str, list[list[str]]] = {
    "photos.example.com": once(PUBLIC),
    "images.example.com": once(PUBLIC),
    "cdn.example.org": once("2606:2800:220:1::1", PUBLIC),
    "0x7f.example.com": once(PUBLIC),
    "xn--bcher-kva.example": once(PUBLIC),
    "loopback.example": once("127.0.0.1"),
    "private.example": once("10.1.2.3"),
    "cgnat.example": once("100.64.1.1"),
    "mapped.example": once("::ffff:169.254.169.254"),
    "v6-loopback.example": once("::1"),
    "ula.example": once("fd00::1"),
    "mixed.example": once(PUBLIC, "127.0.0.1"),
    "nat64.example": once("64:ff9b::a00:1"),
    "169.254.169.254.nip.io": once("169.254.169.254"),
    # DNS rebinding: public when checked, internal on every later question
    "rebind.example": [[PUBLIC], ["127.0.0.1"]],
    "rebind-hop.example": [[PUBLIC], ["127.0.0.1"]],
}


def to(location: str) -> str:
    return quote(location, safe="")


@dataclass(frozen=True)
class Bypass:
    name: str
    url: str
    expected: type[MediaError] | None
    """The error, or None for a rebinding case the pinning defeats by fetching from the
    checked (public) address."""
    match: str = ""


# {internal}: the internal server's port, so that a URL that slips through reaches it.
BYPASSES: list[Bypass] = [
    # IPv4 loopback in every spelling a resolver accepts
    Bypass("dotted loopback", "http://127.0.0.1:{internal}/secret", MediaError, "loopback"),
    Bypass("decimal", "http://2130706433:{internal}/secret", MediaError, "loopback"),
    Bypass("hex", "http://0x7f000001:{internal}/secret", MediaError, "loopback"),
    Bypass("octal", "http://017700000001:{internal}/secret", MediaError, "loopback"),
    Bypass("dotted octal", "http://0177.0.0.1:{internal}/secret", MediaError, "0177"),
    Bypass("short 127.1", "http://127.1:{internal}/secret", MediaError, "loopback"),
    Bypass("dotted hex", "http://0x7f.1:{internal}/secret", MediaError, "loopback"),
    Bypass("all parts hex", "http://0x7f.0x0.0x0.0x1:{internal}/", MediaError, "loopback"),
    Bypass(
        "ideographic dots", "http://127\u30020\u30020\u30021:{internal}/", MediaError, "loopback"
    ),
    Bypass("trailing dot", "http://127.0.0.1.:{internal}/secret", MediaError, "loopback"),
    Bypass("zero", "http://0:{internal}/secret", MediaError, "unspecified"),
    Bypass("0.0.0.0", "http://0.0.0.0:{internal}/secret", MediaError, "unspecified"),
    # IPv6 and the IPv6 forms that carry an IPv4 address
    Bypass("IPv6 loopback", "http://[::1]:{internal}/secret", MediaError, "loopback"),
    Bypass("IPv4-mapped", "http://[::ffff:127.0.0.1]:{internal}/", MediaError, "IPv4-mapped"),
    Bypass("IPv4-mapped hex", "http://[::ffff:7f00:1]:{internal}/", MediaError, "IPv4-mapped"),
    Bypass("IPv4-compatible", "http://[::127.0.0.1]:{internal}/", MediaError, "compatible"),
    Bypass("6to4", "http://[2002:7f00:1::]:{internal}/", MediaError, "6to4"),
    Bypass("NAT64", "http://[64:ff9b::7f00:1]:{internal}/", MediaError, "NAT64"),
    Bypass(
        "Teredo",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{internal}/",
        MediaError,
        "Teredo",
    ),
    Bypass("unique local", "http://[fd00::1]/", MediaError, "unique local"),
    Bypass("IPv6 link-local", "http://[fe80::1]/", MediaError, "link-local"),
    # private, shared, link-local, multicast, reserved ranges
    Bypass("10/8", "http://10.0.0.1/", MediaError, "private"),
    Bypass("172.16/12", "http://172.16.0.1/", MediaError, "private"),
    Bypass("192.168/16", "http://192.168.1.1/", MediaError, "private"),
    Bypass("CGNAT", "http://100.64.0.1/", MediaError, "carrier-grade NAT"),
    Bypass("link-local", "http://169.254.1.1/", MediaError, "link-local"),
    Bypass("multicast", "http://224.0.0.1/", MediaError, "multicast"),
    Bypass("reserved", "http://240.0.0.1/", MediaError, "reserved"),
    # cloud metadata
    Bypass("AWS metadata", "http://169.254.169.254/latest/meta-data/", MediaError, "metadata"),
    Bypass("metadata decimal", "http://2852039166/", MediaError, "metadata"),
    Bypass("AWS IPv6 metadata", "http://[fd00:ec2::254]/", MediaError, "metadata"),
    Bypass("GCP metadata name", "http://metadata.google.internal/v1/", MediaError, "metadata"),
    Bypass("Alibaba metadata", "http://100.100.100.200/", MediaError, "metadata"),
    # local names, userinfo, schemes
    Bypass("localhost", "http://localhost:{internal}/secret", MediaError, "local host name"),
    Bypass("single label", "http://redis:6379/", MediaError, "single-label"),
    Bypass("userinfo", "http://example.com@127.0.0.1:{internal}/", MediaError, "credentials"),
    Bypass("file scheme", "file:///etc/passwd", MediaError, "not file:"),
    Bypass("gopher scheme", "gopher://127.0.0.1:{internal}/_x", MediaError, "not gopher:"),
    # names that resolve inwards (every address is checked)
    Bypass("name to loopback", "http://loopback.example:{internal}/", MediaError, "127.0.0.1"),
    Bypass("name to 10/8", "http://private.example/", MediaError, "10.1.2.3"),
    Bypass("wildcard DNS to metadata", "http://169.254.169.254.nip.io/", MediaError, "metadata"),
    Bypass("name to CGNAT", "http://cgnat.example/", MediaError, "carrier-grade"),
    Bypass("name to mapped metadata", "http://mapped.example/", MediaError, "metadata"),
    Bypass("name to ::1", "http://v6-loopback.example/", MediaError, "loopback"),
    Bypass("name to ULA", "http://ula.example/", MediaError, "unique local"),
    Bypass("name to NAT64 private", "http://nat64.example/", MediaError, "NAT64"),
    Bypass("public and private answers", "http://mixed.example:{internal}/", MediaError, "127.0"),
    # DNS rebinding: public when checked, loopback when connecting. The connection goes
    # to the checked address, so the internal server is never reached.
    Bypass("DNS rebinding", "http://rebind.example:{internal}/image", None),
    # ... and across a redirect to the same name: the next hop is resolved and checked again.
    Bypass(
        "DNS rebinding across a redirect",
        "http://rebind-hop.example/redirect?to="
        + to("http://rebind-hop.example:{internal}/secret"),
        MediaError,
        "127.0.0.1",
    ),
    # redirects from a public server inwards, and too many of them
    Bypass(
        "redirect to loopback",
        f"http://{PUBLIC}/redirect?to=" + to("http://127.0.0.1:{internal}/secret"),
        MediaError,
        "loopback",
    ),
    Bypass(
        "redirect to 127.1",
        f"http://{PUBLIC}/redirect?to=" + to("http://127.1:{internal}/secret"),
        MediaError,
        "loopback",
    ),
    Bypass(
        "redirect to metadata",
        f"http://{PUBLIC}/redirect?to=" + to("http://169.254.169.254/latest/meta-data/"),
        MediaError,
        "metadata",
    ),
    Bypass(
        "redirect to a name resolving inwards",
        f"http://{PUBLIC}/redirect?to=" + to("http://loopback.example:{internal}/secret"),
        MediaError,
        "127.0.0.1",
    ),
    Bypass(
        "redirect to file:",
        f"http://{PUBLIC}/redirect?to=" + to("file:///etc/passwd"),
        MediaError,
        "not file:",
    ),
    Bypass("4-hop redirect chain", f"http://{PUBLIC}/chain/4", MediaError, "more than 3 times"),
]

LEGITIMATE: list[str] = [
    f"http://{PUBLIC}/image",
    "http://photos.example.com/image",
    "http://photos.example.com./image",
    "http://IMAGES.Example.COM/image?w=1#top",
    "http://cdn.example.org:8080/image",
    "http://0x7f.example.com/image",
    "http://bücher.example/image",
    "http://8.8.8.8/image",
    "http://[2606:2800:220:1::1]/image",
    "http://[::ffff:93.184.216.34]/image",
    "http://[64:ff9b::93.184.216.34]/image",
    f"http://{PUBLIC}/chain/3",
    f"http://{PUBLIC}/redirect?to=" + to("http://photos.example.com/image"),
    "http://photos.example.com/redirect?to=" + to("/chain/2"),
    "data:image/png;base64," + base64.b64encode(PNG).decode(),
]


@dataclass
class Lab:
    internet: LocalServer
    internal: LocalServer
    network: LabNetwork = field(init=False)

    def __post_init__(self) -> None:
        self.network = LabNetwork(self.internet.port)

    async def fetch(self, url: str, dns: Dns) -> bytes:
        port = str(self.internal.port)
        async with httpx.AsyncClient(transport=LabTransport(self.network)) as client:
            fetched = await fetch_bytes(
                url.replace("{internal}", port).replace(to("{internal}"), port),
                limits=LIMITS,
                policy=STRICT,
                resolver=dns,
                client=client,
            )
        return fetched.data


@pytest.fixture
def lab() -> Iterator[Lab]:
    internet = serve(None)
    internal = serve(None)
    yield Lab(next(internet), next(internal))
    for server in (internet, internal):
        server.close()


async def test_every_bypass_form_is_refused(lab: Lab) -> None:
    assert len(BYPASSES) >= 30
    failures: list[str] = []
    for case in BYPASSES:
        dns = Dns(DNS_TABLE)
        connects_before = len(lab.network.connects)
        try:
            data = await lab.fetch(case.url, dns)
        except MediaError as error:
            outcome = f"{type(error).__name__} ({error.code}): {error}"
            if case.expected is None or case.match not in str(error):
                failures.append(f"{case.name}: {outcome}")
            elif error.retryable:
                failures.append(f"{case.name}: refused but marked retryable: {outcome}")
        else:
            # Only the pinned rebinding case may fetch: from the address that was checked.
            opened = lab.network.connects[connects_before:]
            if case.expected is not None or data != PNG or opened != [PUBLIC]:
                failures.append(f"{case.name}: fetched {len(data)} bytes via {opened}")
            if dns.calls != ["rebind.example"]:
                failures.append(f"{case.name}: resolved {dns.calls}, not once")
        if lab.internal.requests:
            failures.append(f"{case.name}: reached the internal server {lab.internal.paths}")
    leaked = [host for host in lab.network.connects if ip_address(host) not in PUBLIC_ADDRESSES]
    refused = len(BYPASSES) - len({failure.split(":", 1)[0] for failure in failures})
    print(f"\nSSRF table: {refused} of {len(BYPASSES)} bypass forms refused")
    assert failures == []
    assert leaked == []
    assert lab.internal.requests == []


async def test_every_legitimate_url_is_fetched(lab: Lab) -> None:
    failures: list[str] = []
    for url in LEGITIMATE:
        try:
            data = await lab.fetch(url, Dns(DNS_TABLE))
        except MediaError as error:
            failures.append(f"{url[:80]}: {type(error).__name__}: {error}")
        else:
            if data != PNG:
                failures.append(f"{url[:80]}: {len(data)} unexpected bytes")
    print(f"\nSSRF table: {len(failures)} of {len(LEGITIMATE)} legitimate URLs refused")
    assert failures == []
    assert all(ip_address(host) in PUBLIC_ADDRESSES for host in lab.network.connects)
    assert len(lab.internet.requests) >= len(LEGITIMATE) - 1  # the data: URI needs none


async def test_rebinding_without_pinning_would_have_reached_the_internal_server(
    lab: Lab,
) -> None:
    """The control for the rebinding case: a client that resolves the name again when it
    connects (as plain httpx does) is sent to the second answer, the internal server."""
    dns = Dns(DNS_TABLE)
    url = f"http://rebind.example:{lab.internal.port}/image"
    checked = STRICT.check_resolved(STRICT.check_url(url), list(await dns("rebind.example", 80)))
    assert [str(a) for a in checked] == [PUBLIC]
    second = (await dns("rebind.example", 80))[0]  # what a resolving client would use
    async with httpx.AsyncClient(transport=LabTransport(lab.network)) as client:
        response = await client.get(f"http://{second}:{lab.internal.port}/image")
    assert response.status_code == 200
    assert lab.internal.paths == ["/image"]
