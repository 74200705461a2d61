"""The pure address policy: bypass forms that must be refused, and hosts that pass."""

from __future__ import annotations

import re
from ipaddress import ip_address, ip_network

import pytest

from pixelbus.media import BlockedUrl, InvalidUrl, SsrfPolicy, is_forbidden_address
from pixelbus.media.errors import UrlRefused

POLICY = SsrfPolicy()

REFUSED: list[tuple[str, type[UrlRefused], str]] = [
    # IPv4 loopback in every spelling a resolver accepts
    ("http://127.0.0.1/", BlockedUrl, "loopback"),
    ("http://2130706433/", BlockedUrl, "loopback"),
    ("http://0x7f000001/", BlockedUrl, "loopback"),
    ("http://0x7f.1/", BlockedUrl, "loopback"),
    ("http://127.1/", BlockedUrl, "loopback"),
    ("http://0177.1/", BlockedUrl, "loopback"),
    ("http://017700000001/", BlockedUrl, "loopback"),
    ("http://127.0.0.1.:8080/", BlockedUrl, "loopback"),
    ("http://0177.0.0.1/", InvalidUrl, "0177.0.0.1"),
    ("http://0/", BlockedUrl, "unspecified"),
    ("http://0.0.0.0:9000/", BlockedUrl, "unspecified"),
    # IPv6 and IPv6 forms that carry an IPv4 address
    ("http://[::1]/", BlockedUrl, "loopback"),
    ("http://[::]/", BlockedUrl, "unspecified"),
    ("http://[::ffff:127.0.0.1]/", BlockedUrl, "127.0.0.1 in IPv4-mapped IPv6 form"),
    ("http://[::ffff:7f00:1]/", BlockedUrl, "IPv4-mapped"),
    ("http://[::127.0.0.1]/", BlockedUrl, "IPv4-compatible"),
    ("http://[2002:7f00:1::]/", BlockedUrl, "127.0.0.1 in 6to4 IPv6 form"),
    ("http://[2002:a00:1::1]/", BlockedUrl, "10.0.0.1 in 6to4"),
    ("http://[64:ff9b::7f00:1]/", BlockedUrl, "127.0.0.1 in NAT64"),
    ("http://[64:ff9b::10.0.0.1]/", BlockedUrl, "private"),
    ("http://[64:ff9b:1::8.8.8.8]/", BlockedUrl, "local-use NAT64"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", BlockedUrl, "127.0.0.1 in Teredo"),
    ("http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/", BlockedUrl, "Teredo tunnel"),
    ("http://[fd00::1]/", BlockedUrl, "unique local"),
    ("http://[fc00::5]:8080/", BlockedUrl, "unique local"),
    ("http://[fe80::1]/", BlockedUrl, "link-local"),
    ("http://[fec0::1]/", BlockedUrl, "site-local"),
    ("http://[ff02::1]/", BlockedUrl, "multicast"),
    ("http://[100::1]/", BlockedUrl, "discard"),
    ("http://[2001:db8::1]/", BlockedUrl, "documentation"),
    ("http://[fe80::1%25eth0]/", InvalidUrl, "invalid host"),
    # private, shared and special IPv4 ranges
    ("http://10.0.0.1/", BlockedUrl, "private"),
    ("http://172.16.5.4/", BlockedUrl, "private"),
    ("http://192.168.1.1/", BlockedUrl, "private"),
    ("http://100.64.0.1/", BlockedUrl, "carrier-grade NAT"),
    ("http://169.254.1.1/", BlockedUrl, "link-local"),
    ("http://192.0.2.1/", BlockedUrl, "documentation"),
    ("http://198.18.0.1/", BlockedUrl, "benchmarking"),
    ("http://224.0.0.1/", BlockedUrl, "multicast"),
    ("http://240.0.0.1/", BlockedUrl, "reserved"),
    ("http://255.255.255.255/", BlockedUrl, "broadcast"),
    # cloud metadata, by address in any form and by name
    ("http://169.254.169.254/latest/meta-data/", BlockedUrl, "cloud metadata address"),
    ("http://2852039166/", BlockedUrl, "cloud metadata address"),
    ("http://0xa9fea9fe/", BlockedUrl, "cloud metadata address"),
    ("http://[::ffff:a9fe:a9fe]/", BlockedUrl, "169.254.169.254 in IPv4-mapped"),
    ("http://[fd00:ec2::254]/", BlockedUrl, "cloud metadata address"),
    ("http://[fd20:ce::254]/", BlockedUrl, "cloud metadata address"),
    ("http://100.100.100.200/", BlockedUrl, "cloud metadata address"),
    ("http://168.63.129.16/", BlockedUrl, "cloud metadata address"),
    ("http://metadata.google.internal/computeMetadata/v1/", BlockedUrl, "metadata host name"),
    ("http://METADATA.Google.Internal./", BlockedUrl, "metadata host name"),
    ("http://metadata/", BlockedUrl, "metadata host name"),
    ("http://instance-data/latest/", BlockedUrl, "metadata host name"),
    # local names
    ("http://localhost:8080/", BlockedUrl, "local host name"),
    ("http://images.localhost/", BlockedUrl, "local host name"),
    ("http://kubernetes.default.svc.cluster.local/", BlockedUrl, "local host name"),
    ("http://redis:6379/", BlockedUrl, "single-label"),
    # userinfo
    ("http://a@example.com/", BlockedUrl, "credentials"),
    ("http://user:secret@example.com/", BlockedUrl, "credentials"),
    ("http://example.com@127.0.0.1/", BlockedUrl, "credentials"),
    ("http://@127.0.0.1/", BlockedUrl, "credentials"),
    ("http://example.com\\@127.0.0.1/", BlockedUrl, "credentials"),
    # schemes
    ("file:///etc/passwd", BlockedUrl, "not file:"),
    ("gopher://example.com:70/_x", BlockedUrl, "not gopher:"),
    ("ftp://example.com/a.png", BlockedUrl, "not ftp:"),
    ("dict://example.com:11211/", BlockedUrl, "not dict:"),
    ("javascript:alert(1)", BlockedUrl, "not javascript:"),
    ("//example.com/a.png", BlockedUrl, "without a scheme"),
    # malformed hosts
    ("http://127.0.0.%31/", InvalidUrl, "invalid host"),
    ("http://1.2.3.4.5/", InvalidUrl, "invalid IPv4 address"),
    ("http://256.1/", InvalidUrl, "invalid IPv4 address"),
    ("http:///a.png", InvalidUrl, "no host"),
    ("http://exa mple.com/", InvalidUrl, "invalid"),
]


@pytest.mark.parametrize(("url", "error", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refuses(url: str, error: type[UrlRefused], reason: str) -> None:
    with pytest.raises(error, match=re.escape(reason)) as caught:
        POLICY.check_url(url)
    assert caught.value.retryable is False
    assert caught.value.code == ("ssrf_blocked" if error is BlockedUrl else "invalid_url")


def test_there_are_many_bypass_forms() -> None:
    assert len(REFUSED) >= 30


# (url, host, port, whether the host is an IP literal)
ALLOWED: list[tuple[str, str, int, bool]] = [
    ("https://example.com/cat.png", "example.com", 443, False),
    ("http://Images.Example.org:8080/a.jpg?w=1#x", "images.example.org", 8080, False),
    ("https://example.com./a.png", "example.com", 443, False),
    ("https://bücher.example/a.png", "xn--bcher-kva.example", 443, False),
    ("http://0x7f.example.com/", "0x7f.example.com", 80, False),
    ("http://8.8.8.8/", "8.8.8.8", 80, True),
    ("http://1.1.1.1:8443/", "1.1.1.1", 8443, True),
    ("https://[2606:4700:4700::1111]/", "2606:4700:4700::1111", 443, True),
    ("http://[::ffff:8.8.8.8]/", "::ffff:808:808", 80, True),
    ("http://[64:ff9b::8.8.8.8]/", "64:ff9b::808:808", 80, True),
    ("http://[2002:808:808::1]/", "2002:808:808::1", 80, True),
]


@pytest.mark.parametrize(("url", "host", "port", "literal"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_allows_public_hosts(url: str, host: str, port: int, literal: bool) -> None:
    target = POLICY.check_url(url)
    assert (target.host, target.port) == (host, port)
    assert (target.address is not None) is literal


def test_allow_networks_opens_only_what_it_names() -> None:
    policy = SsrfPolicy(allow_networks=(ip_network("127.0.0.0/8"),))
    assert policy.check_url("http://127.0.0.1:8080/").address == ip_address("127.0.0.1")
    assert policy.check_url("http://[::ffff:127.0.0.2]/").port == 80
    with pytest.raises(BlockedUrl, match="private"):
        policy.check_url("http://10.0.0.1/")
    with pytest.raises(BlockedUrl, match="loopback"):
        policy.check_url("http://[::1]/")


def test_metadata_stays_refused_even_when_its_network_is_allowed() -> None:
    policy = SsrfPolicy(allow_networks=(ip_network("169.254.0.0/16"),))
    assert policy.check_url("http://169.254.1.1/").host == "169.254.1.1"
    with pytest.raises(BlockedUrl, match="metadata"):
        policy.check_url("http://169.254.169.254/")
    with pytest.raises(BlockedUrl, match="metadata"):
        policy.check_url("http://[::ffff:169.254.169.254]/")


def test_every_resolved_address_is_checked() -> None:
    target = POLICY.check_url("https://cdn.example.com/a.png")
    public = [ip_address("93.184.216.34"), ip_address("2606:2800:220:1::1")]
    assert POLICY.check_resolved(target, public) == public
    with pytest.raises(BlockedUrl, match=re.escape("'cdn.example.com': it resolves to 10.0.0.8")):
        POLICY.check_resolved(target, [*public, ip_address("10.0.0.8")])
    with pytest.raises(BlockedUrl, match="no address"):
        POLICY.check_resolved(target, [])


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("0.0.0.0", "the unspecified address"),
        ("::ffff:10.1.2.3", "10.1.2.3 in IPv4-mapped IPv6 form, a private address"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254 in NAT64 IPv6 form, a cloud metadata address"),
        ("2002:c0a8:101::", "192.168.1.1 in 6to4 IPv6 form, a private address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("8.8.8.8", None),
        ("2a00:1450:4001:80b::200e", None),
    ],
)
def test_is_forbidden_address(address: str, reason: str | None) -> None:
    assert is_forbidden_address(ip_address(address)) == reason
