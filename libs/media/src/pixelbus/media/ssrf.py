"""Which URLs and addresses may be fetched: a pure policy, no I/O.

A URL passes ``SsrfPolicy.check_url`` (scheme, userinfo, host syntax, known metadata
and local host names, and the address when the host is an IP literal in any of the
forms a resolver accepts, such as ``2130706433``, ``0x7f.1`` or ``127.1``). The fetcher
then resolves a host name once, checks every address with ``SsrfPolicy.address_refusal``
and connects to a checked address only.

IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo and
NAT64) are judged by the address they carry as well as by their own range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import TypeAlias

import httpx

from pixelbus.media.errors import BlockedUrl, InvalidUrl, describe_url

__all__ = [
    "IPAddress",
    "IPNetwork",
    "SsrfPolicy",
    "UrlTarget",
    "is_forbidden_address",
    "is_forbidden_host_name",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_URL_LENGTH = 8192

#: Instance metadata services of the large clouds; refused even when an
#: ``allow_networks`` entry covers them.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server (a public address)
        "fd00:ec2::254",  # AWS IPv6
        "fd00:ec2::23",  # AWS EKS pod identity IPv6
        "fd20:ce::254",  # GCP IPv6
    )
)

METADATA_HOST_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.com",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
    }
)

# Names that only mean something inside a machine or a private network.
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa", ".arpa")

_N = ip_network
# First match wins, so narrower ranges come before the ranges that contain them.
_FORBIDDEN_NETWORKS: tuple[tuple[IPNetwork, str], ...] = (
    (_N("0.0.0.0/32"), "the unspecified address"),
    (_N("0.0.0.0/8"), "a 'this network' address"),
    (_N("10.0.0.0/8"), "a private address"),
    (_N("100.64.0.0/10"), "a carrier-grade NAT (shared) address"),
    (_N("127.0.0.0/8"), "a loopback address"),
    (_N("169.254.0.0/16"), "a link-local address"),
    (_N("172.16.0.0/12"), "a private address"),
    (_N("192.0.0.0/24"), "an IETF protocol assignment"),
    (_N("192.0.2.0/24"), "a documentation address"),
    (_N("192.88.99.0/24"), "a 6to4 relay address"),
    (_N("192.168.0.0/16"), "a private address"),
    (_N("198.18.0.0/15"), "a benchmarking address"),
    (_N("198.51.100.0/24"), "a documentation address"),
    (_N("203.0.113.0/24"), "a documentation address"),
    (_N("224.0.0.0/4"), "a multicast address"),
    (_N("255.255.255.255/32"), "the broadcast address"),
    (_N("240.0.0.0/4"), "a reserved address"),
    (_N("::/128"), "the unspecified address"),
    (_N("::1/128"), "a loopback address"),
    (_N("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_N("::/8"), "a reserved address"),
    (_N("100::/64"), "a discard-only address"),
    (_N("2001::/32"), "a Teredo tunnel address"),
    (_N("2001:db8::/32"), "a documentation address"),
    (_N("2001::/23"), "an IETF protocol assignment"),
    (_N("3fff::/20"), "a documentation address"),
    (_N("fc00::/7"), "a unique local (private) address"),
    (_N("fe80::/10"), "a link-local address"),
    (_N("fec0::/10"), "a site-local address"),
    (_N("ff00::/8"), "a multicast address"),
)
_NAT64 = _N("64:ff9b::/96")
_IPV4_COMPATIBLE = _N("::/96")

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMBER = re.compile(r"^(?:[0-9]+|0[xX][0-9a-fA-F]*)$")


def embedded_ipv4(address: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, with the name of the form."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address.teredo is not None:
        return "Teredo", address.teredo[1]
    if address in _NAT64:
        return "NAT64", IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return "IPv4-compatible", IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _range_refusal(address: IPAddress) -> str | None:
    for network, reason in _FORBIDDEN_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    if not address.is_global:
        return "not a globally routable address"
    return None


def is_forbidden_address(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched from, or None when it may be."""
    carried = embedded_ipv4(address) if isinstance(address, IPv6Address) else None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if carried is not None:
        form, ipv4 = carried
        inner = is_forbidden_address(ipv4)
        if inner is not None:
            return f"{ipv4} in {form} IPv6 form, {inner}"
        if form in ("IPv4-mapped", "NAT64"):
            return None  # reaches the public IPv4 address itself
    return _range_refusal(address)


def is_forbidden_host_name(name: str) -> str | None:
    """Why a (lower-case, ASCII) host name must not be fetched from, or None."""
    name = name.rstrip(".")
    if name in METADATA_HOST_NAMES:
        return "a cloud metadata host name"
    if name in _LOCAL_NAMES or name.endswith(_LOCAL_SUFFIXES):
        return "a local host name"
    if "." not in name:
        return "a single-label (local network) host name"
    return None


def _parse_ipv4_number(part: str) -> int | None:
    if part[:2].lower() == "0x":
        digits, base = part[2:], 16
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits:
        return 0 if base == 16 else None
    try:
        return int(digits, base)
    except ValueError:
        return None


def _parse_lenient_ipv4(host: str) -> IPv4Address | None:
    """The inet_aton/WHATWG IPv4 forms: 1 to 4 decimal, octal or hex parts, the last
    filling the remaining bytes (``127.1``, ``0x7f.1``, ``2130706433``, ``0``).

    Raises InvalidUrl when the host ends in a number but is no valid address."""
    parts = host.split(".")
    if not _NUMBER.match(parts[-1]):
        return None
    numbers = [_parse_ipv4_number(p) for p in parts] if len(parts) <= 4 else [None]
    if any(n is None for n in numbers):
        raise InvalidUrl(f"invalid IPv4 address {host[:100]!r}")
    values = [n for n in numbers if n is not None]
    last_limit = 256 ** (5 - len(values))
    if any(v > 255 for v in values[:-1]) or values[-1] >= last_limit:
        raise InvalidUrl(f"invalid IPv4 address {host[:100]!r}")
    value = values[-1]
    for index, number in enumerate(values[:-1]):
        value += number << (8 * (3 - index))
    return IPv4Address(value)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address when ``host`` (as in a URL, IPv6 without brackets) is an IP literal
    in any form a resolver would accept; None for a host name."""
    if ":" in host:
        try:
            return IPv6Address(host.strip("[]"))
        except ValueError:
            raise InvalidUrl(f"invalid IPv6 address {host[:100]!r}") from None
    return _parse_lenient_ipv4(host.rstrip("."))


@dataclass(frozen=True, kw_only=True)
class UrlTarget:
    """A URL that passed the policy; ``address`` is set when its host is an IP literal."""

    url: httpx.URL
    host: str
    port: int
    address: IPAddress | None

    @property
    def label(self) -> str:
        return f"host {self.host!r}"


@dataclass(frozen=True, kw_only=True)
class SsrfPolicy:
    """The fetch policy. ``allow_networks`` lets tests and local development reach
    chosen private ranges (e.g. ``ip_network("127.0.0.0/8")``); it is empty in
    production. Cloud metadata addresses stay refused whatever it says."""

    allow_networks: tuple[IPNetwork, ...] = ()

    def address_refusal(self, address: IPAddress) -> str | None:
        """Why a resolved ``address`` must not be connected to, or None."""
        candidates: list[IPAddress] = [address]
        if isinstance(address, IPv6Address) and (carried := embedded_ipv4(address)):
            candidates.append(carried[1])
        if any(a in METADATA_ADDRESSES for a in candidates):
            return is_forbidden_address(address)
        if any(
            a.version == net.version and a in net for a in candidates for net in self.allow_networks
        ):
            return None
        return is_forbidden_address(address)

    def check_url(self, url: str) -> UrlTarget:
        """Parse ``url`` and refuse it unless it may be fetched (resolution aside)."""
        if len(url) > _MAX_URL_LENGTH:
            raise InvalidUrl(f"URL is longer than {_MAX_URL_LENGTH} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as error:
            raise InvalidUrl(f"invalid URL for {describe_url(url)}: {error}") from None
        scheme = parsed.scheme
        if scheme not in ALLOWED_SCHEMES:
            shown = f"{scheme}:" if scheme else "a URL without a scheme"
            raise BlockedUrl(f"only http and https URLs can be fetched, not {shown}")
        authority = url.split("//", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        host = parsed.raw_host.decode("ascii").lower()
        if parsed.userinfo or "@" in authority:
            raise BlockedUrl(f"URLs with credentials (user@host) are refused (host {host!r})")
        if not host:
            raise InvalidUrl("URL has no host")
        if "%" in host:
            raise InvalidUrl(f"invalid host {host[:100]!r}")
        port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[scheme]
        if not 0 < port < 65536:
            raise InvalidUrl(f"invalid port {port} for host {host!r}")
        address = parse_ip_literal(host)
        if address is not None:
            reason = self.address_refusal(address)
            if reason is not None:
                shown = str(address) if host == str(address) else f"host {host!r} ({address})"
                raise BlockedUrl(f"refused to fetch from {shown}: it is {reason}")
            return UrlTarget(url=parsed, host=str(address), port=port, address=address)
        name = host.rstrip(".")
        if not all(_LABEL.match(label) for label in name.split(".")):
            raise InvalidUrl(f"invalid host name {host[:100]!r}")
        reason = is_forbidden_host_name(name)
        if reason is not None:
            raise BlockedUrl(f"refused to fetch from host {name!r}: it is {reason}")
        return UrlTarget(url=parsed, host=name, port=port, address=None)

    def check_resolved(self, target: UrlTarget, addresses: list[IPAddress]) -> list[IPAddress]:
        """Refuse the host unless every address it resolved to is allowed; return the
        addresses to connect to, in order."""
        if not addresses:
            raise BlockedUrl(f"refused to fetch from {target.label}: it has no address")
        for address in addresses:
            reason = self.address_refusal(address)
            if reason is not None:
                raise BlockedUrl(
                    f"refused to fetch from {target.label}: it resolves to {address}, {reason}"
                )
        return addresses
