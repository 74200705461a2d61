"""fetch_bytes against a real local server, allowed in by the policy's escape hatch."""

from __future__ import annotations

import base64
import re
import socket
import ssl
from collections.abc import Sequence
from ipaddress import ip_address, ip_network
from urllib.parse import quote

import httpx
import pytest
from media_server import BIG, PNG, Certificate, LocalServer

from pixelbus.media import (
    BadDataUri,
    BlockedUrl,
    FetchFailed,
    FetchLimits,
    FetchTimeout,
    HttpStatusError,
    InvalidUrl,
    SsrfPolicy,
    TooLarge,
    TooManyRedirects,
    fetch_bytes,
)
from pixelbus.media.ssrf import IPAddress

LOOPBACK = SsrfPolicy(allow_networks=(ip_network("127.0.0.1/32"),))
STRICT = SsrfPolicy()
LIMITS = FetchLimits(max_bytes=1_000_000, timeout_s=5, max_redirects=3)


class StubResolver:
    """Answers from a table and remembers every question."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip_address(a) for a in self.table[host]]


async def test_fetches_body_and_media_type(http_server: LocalServer) -> None:
    fetched = await fetch_bytes(http_server.url("/image"), limits=LIMITS, policy=LOOPBACK)
    assert fetched.data == PNG
    assert fetched.content_type == "image/png"
    assert fetched.final_url == http_server.url("/image")


async def test_resolves_once_and_keeps_the_host_name(http_server: LocalServer) -> None:
    resolver = StubResolver({"photos.example": ["127.0.0.1"]})
    url = http_server.url("/image", host="photos.example")
    fetched = await fetch_bytes(url, limits=LIMITS, policy=LOOPBACK, resolver=resolver)
    assert fetched.data == PNG
    assert resolver.calls == [("photos.example", http_server.port)]
    assert [seen.host for seen in http_server.requests] == [f"photos.example:{http_server.port}"]
    assert fetched.final_url == url


async def test_https_pins_the_address_and_sends_the_host_name(
    https_server: LocalServer, certificate: Certificate
) -> None:
    resolver = StubResolver({certificate.host: ["127.0.0.1"]})
    trust = ssl.create_default_context(cafile=str(certificate.cert))
    async with httpx.AsyncClient(verify=trust, trust_env=False) as client:
        fetched = await fetch_bytes(
            https_server.url("/image", host=certificate.host),
            limits=LIMITS,
            policy=LOOPBACK,
            resolver=resolver,
            client=client,
        )
    assert fetched.data == PNG
    assert https_server.server_names == [certificate.host]
    assert https_server.requests[0].host == f"{certificate.host}:{https_server.port}"


async def test_https_verifies_the_certificate_against_the_host_name(
    https_server: LocalServer, certificate: Certificate
) -> None:
    resolver = StubResolver({"other.example": ["127.0.0.1"]})
    trust = ssl.create_default_context(cafile=str(certificate.cert))
    async with httpx.AsyncClient(verify=trust, trust_env=False) as client:
        with pytest.raises(
            FetchFailed, match=re.escape("certificate of host 'other.example'")
        ) as caught:
            await fetch_bytes(
                https_server.url("/image", host="other.example"),
                limits=LIMITS,
                policy=LOOPBACK,
                resolver=resolver,
                client=client,
            )
    assert caught.value.retryable is False
    assert https_server.server_names == ["other.example"]
    assert https_server.requests == []


async def test_tries_the_next_checked_address_when_one_refuses(http_server: LocalServer) -> None:
    # Nothing listens on 127.0.0.2 at this port: the connection is refused there.
    resolver = StubResolver({"dual.example": ["127.0.0.2", "127.0.0.1"]})
    policy = SsrfPolicy(allow_networks=(ip_network("127.0.0.0/8"),))
    url = http_server.url("/image", host="dual.example")
    fetched = await fetch_bytes(url, limits=LIMITS, policy=policy, resolver=resolver)
    assert fetched.data == PNG
    assert http_server.paths == ["/image"]


async def test_follows_relative_redirects_up_to_the_limit(http_server: LocalServer) -> None:
    fetched = await fetch_bytes(http_server.url("/chain/3"), limits=LIMITS, policy=LOOPBACK)
    assert fetched.data == PNG
    assert fetched.final_url == http_server.url("/chain/0")
    assert http_server.paths == ["/chain/3", "/chain/2", "/chain/1", "/chain/0"]


async def test_too_many_redirects(http_server: LocalServer) -> None:
    with pytest.raises(TooManyRedirects, match="more than 3 times") as caught:
        await fetch_bytes(http_server.url("/chain/4"), limits=LIMITS, policy=LOOPBACK)
    assert caught.value.retryable is False
    assert http_server.paths == ["/chain/4", "/chain/3", "/chain/2", "/chain/1"]


@pytest.mark.parametrize(
    ("location", "named"),
    [
        ("http://private.example/secret", "private.example"),
        ("http://mixed.example/secret", "mixed.example"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[::1]:{port}/image", "::1"),
        ("http://localhost:{port}/image", "localhost"),
        ("http://0x7f.2:{port}/image", "127.0.0.2"),
        ("file:///etc/passwd", "file:"),
        ("http://user@public.example:{port}/image", "credentials"),
    ],
)
async def test_each_redirect_is_checked_again(
    http_server: LocalServer, location: str, named: str
) -> None:
    """A public host (a stub name for the loopback server) redirecting inwards."""
    resolver = StubResolver(
        {
            "public.example": ["127.0.0.1"],
            "private.example": ["10.1.2.3"],
            "mixed.example": ["127.0.0.1", "192.168.0.7"],
        }
    )
    target = quote(location.format(port=http_server.port), safe="")
    url = http_server.url(f"/redirect?to={target}", host="public.example")
    with pytest.raises(BlockedUrl, match=re.escape(named)) as caught:
        await fetch_bytes(url, limits=LIMITS, policy=LOOPBACK, resolver=resolver)
    assert caught.value.code == "ssrf_blocked"
    assert caught.value.retryable is False
    assert http_server.paths == [f"/redirect?to={target}"]


async def test_an_invalid_redirect_location_is_refused(http_server: LocalServer) -> None:
    url = http_server.url(f"/redirect?to={quote('http://[::1', safe='')}")
    with pytest.raises(InvalidUrl, match="redirected to an invalid URL") as caught:
        await fetch_bytes(url, limits=LIMITS, policy=LOOPBACK)
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("host", "table"),
    [
        ("127.0.0.1", {}),
        ("2130706433", {}),
        ("loopback.example", {"loopback.example": ["127.0.0.1"]}),
        ("rebind.example", {"rebind.example": ["93.184.216.34", "127.0.0.1"]}),
    ],
)
async def test_no_request_reaches_a_forbidden_address(
    http_server: LocalServer, host: str, table: dict[str, list[str]]
) -> None:
    url = http_server.url("/image", host=host)
    resolver = StubResolver(table)
    with pytest.raises(BlockedUrl, match="loopback"):
        await fetch_bytes(url, limits=LIMITS, policy=STRICT, resolver=resolver)
    assert http_server.requests == []
    # The same URL does reach the server once the policy lets loopback in.
    allowing = SsrfPolicy(allow_networks=(ip_network("127.0.0.0/8"), ip_network("0.0.0.0/0")))
    table_without_public = {name: ["127.0.0.1"] for name in table}
    resolver = StubResolver(table_without_public)
    await fetch_bytes(url, limits=LIMITS, policy=allowing, resolver=resolver)
    assert http_server.paths == ["/image"]


async def test_refuses_a_declared_length_over_the_limit(http_server: LocalServer) -> None:
    limits = FetchLimits(max_bytes=BIG - 1, timeout_s=5)
    with pytest.raises(TooLarge, match=f"sent {BIG} bytes") as caught:
        await fetch_bytes(http_server.url("/big"), limits=limits, policy=LOOPBACK)
    assert caught.value.retryable is False
    assert caught.value.code == "too_large"


async def test_caps_a_body_without_declared_length(http_server: LocalServer) -> None:
    limits = FetchLimits(max_bytes=BIG - 1, timeout_s=5)
    with pytest.raises(TooLarge, match="more than the limit"):
        await fetch_bytes(http_server.url("/big-unsized"), limits=limits, policy=LOOPBACK)
    exact = FetchLimits(max_bytes=BIG, timeout_s=5)
    fetched = await fetch_bytes(http_server.url("/big-unsized"), limits=exact, policy=LOOPBACK)
    assert len(fetched.data) == BIG


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/hang", "host '127.0.0.1'"),
        # A byte every 50 ms: no single read times out, only the cap on the whole fetch.
        ("/drip", "fetching from host '127.0.0.1' took longer than 0.3 s"),
    ],
)
async def test_caps_the_whole_fetch_in_time(
    http_server: LocalServer, path: str, message: str
) -> None:
    limits = FetchLimits(timeout_s=0.3)
    with pytest.raises(FetchTimeout, match=re.escape(message)) as caught:
        await fetch_bytes(http_server.url(path), limits=limits, policy=LOOPBACK)
    assert caught.value.retryable is True
    assert caught.value.code == "fetch_timeout"


@pytest.mark.parametrize(
    ("status", "retryable"), [(404, False), (403, False), (410, False), (429, True), (503, True)]
)
async def test_http_errors(http_server: LocalServer, status: int, retryable: bool) -> None:
    with pytest.raises(HttpStatusError, match=f"'127.0.0.1' answered HTTP {status}") as caught:
        await fetch_bytes(http_server.url(f"/status/{status}"), limits=LIMITS, policy=LOOPBACK)
    assert caught.value.status_code == status
    assert caught.value.retryable is retryable
    assert caught.value.code == "fetch_http_error"


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchFailed, match=re.escape("host '127.0.0.1'")) as caught:
        await fetch_bytes(f"http://127.0.0.1:{port}/", limits=LIMITS, policy=LOOPBACK)
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), False),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), True),
    ],
)
async def test_resolution_failures(error: socket.gaierror, retryable: bool) -> None:
    async def failing(host: str, port: int) -> Sequence[IPAddress]:
        raise error

    expected = re.escape("could not resolve host 'nowhere.example'")
    with pytest.raises(FetchFailed, match=expected) as caught:
        await fetch_bytes(
            "https://nowhere.example/a.png", limits=LIMITS, policy=STRICT, resolver=failing
        )
    assert caught.value.retryable is retryable


async def test_data_uri_needs_no_network() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    fetched = await fetch_bytes(uri, limits=LIMITS, policy=STRICT)
    assert fetched.data == PNG
    assert fetched.content_type == "image/png"


async def test_data_uri_tolerates_line_breaks_and_missing_padding() -> None:
    encoded = base64.b64encode(b"abcd").decode().rstrip("=")
    uri = f"DATA:image/jpeg;BASE64,{encoded[:3]}\n{encoded[3:]}"
    fetched = await fetch_bytes(uri, limits=LIMITS, policy=STRICT)
    assert fetched.data == b"abcd"


@pytest.mark.parametrize(
    ("uri", "error", "message"),
    [
        ("data:image/png;base64", BadDataUri, "no ','"),
        ("data:image/png,%89PNG", BadDataUri, "only base64"),
        ("data:image/png;base64,@@@@", BadDataUri, "valid base64"),
        ("data:image/png;base64,", BadDataUri, "empty"),
        ("data:image/png;base64," + "QUFB" * 400, TooLarge, "more than 1000 bytes"),
    ],
)
async def test_bad_data_uris(uri: str, error: type[Exception], message: str) -> None:
    limits = FetchLimits(max_bytes=1000)
    with pytest.raises(error, match=message) as caught:
        await fetch_bytes(uri, limits=limits, policy=STRICT)
    assert "QUFB" not in str(caught.value)
    assert "data: URI (image/png" in str(caught.value)


@pytest.mark.parametrize(
    "limits", [{"max_bytes": 0}, {"timeout_s": 0}, {"max_redirects": -1}, {"max_redirects": 4}]
)
def test_limits_must_make_sense(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid fetch limits"):
        FetchLimits(**limits)  # type: ignore[arg-type]
