"""Fetching user-supplied URLs without letting them reach private networks.

For http(s) every hop is checked by the SsrfPolicy, its host resolved once, every
address checked, and the connection made to a checked address itself (the next one when
a connection is refused): the request goes to the IP with the original ``Host`` header
and TLS server name, so a second DNS answer (DNS rebinding) cannot redirect it.
Redirects are followed by hand, each one re-checked. The body is capped while it
streams and the whole fetch is capped in time.

A client passed in must not use a proxy (the proxy would resolve names itself) and is
best not shared with fetches of unrelated hosts: its connection pool is keyed by address,
so a TLS connection opened for one host name may be reused for another on the same IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import ip_address

import httpx

from pixelbus.media.data_uri import decode_data_uri, is_data_uri
from pixelbus.media.errors import (
    FetchFailed,
    FetchTimeout,
    HttpStatusError,
    InvalidUrl,
    MediaError,
    TooLarge,
    TooManyRedirects,
)
from pixelbus.media.ssrf import IPAddress, SsrfPolicy, UrlTarget

__all__ = ["MAX_REDIRECTS", "FetchLimits", "Fetched", "Resolver", "fetch_bytes", "system_resolver"]

#: ``(host, port) -> addresses``; called once per hop with a host name, never an IP.
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADERS = {
    "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8",
    # Bodies are capped after decoding; asking for no compression keeps the bytes
    # on the wire close to those counted.
    "Accept-Encoding": "identity",
    "User-Agent": "pixelbus-media",
}
_PERMANENT_DNS_ERRORS = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)
)


#: The most redirects any fetch follows, whatever its limits say.
MAX_REDIRECTS = 3


@dataclass(frozen=True, kw_only=True)
class FetchLimits:
    max_bytes: int = 25 * 1024 * 1024
    timeout_s: float = 20.0
    """For the whole fetch: resolution, every redirect and the body."""
    max_redirects: int = MAX_REDIRECTS
    """0 to MAX_REDIRECTS; each hop is resolved and checked again."""

    def __post_init__(self) -> None:
        if (
            self.max_bytes < 1
            or self.timeout_s <= 0
            or not 0 <= self.max_redirects <= MAX_REDIRECTS
        ):
            raise ValueError(f"invalid fetch limits: {self}")


@dataclass(frozen=True, kw_only=True)
class Fetched:
    data: bytes
    content_type: str | None
    """The media type without parameters, lower case, e.g. ``image/png``."""
    final_url: str
    """The URL after redirects (the ``data:`` URI itself for one)."""


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address ``getaddrinfo`` gives for ``host``, in its order, without repeats."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def fetch_bytes(
    url: str,
    *,
    limits: FetchLimits,
    policy: SsrfPolicy,
    resolver: Resolver = system_resolver,
    client: httpx.AsyncClient | None = None,
) -> Fetched:
    """The body of ``url`` (http, https or a base64 ``data:`` URI).

    Raises a pixelbus.media.errors.MediaError subclass; nothing else is expected."""
    if is_data_uri(url):
        data, media_type = decode_data_uri(url, max_bytes=limits.max_bytes)
        return Fetched(data=data, content_type=media_type, final_url=url)
    target = policy.check_url(url)
    try:
        async with asyncio.timeout(limits.timeout_s), _client(client, limits) as http:
            return await _follow(http, target, limits=limits, policy=policy, resolver=resolver)
    except TimeoutError:
        raise FetchTimeout(
            f"fetching from {target.label} took longer than {limits.timeout_s:g} s"
        ) from None


@asynccontextmanager
async def _client(
    given: httpx.AsyncClient | None, limits: FetchLimits
) -> AsyncIterator[httpx.AsyncClient]:
    if given is not None:
        yield given
        return
    timeout = httpx.Timeout(limits.timeout_s)
    async with httpx.AsyncClient(trust_env=False, timeout=timeout) as own:
        yield own


async def _follow(
    http: httpx.AsyncClient,
    target: UrlTarget,
    *,
    limits: FetchLimits,
    policy: SsrfPolicy,
    resolver: Resolver,
) -> Fetched:
    for hop in range(limits.max_redirects + 1):
        addresses = await _resolve(target, policy, resolver)
        try:
            response = await _send(http, target, addresses)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    if hop == limits.max_redirects:
                        raise TooManyRedirects(
                            f"{target.label} redirected more than {limits.max_redirects} times"
                        )
                    target = policy.check_url(_redirect_url(target, location))
                    continue
                _check_status(response, target)
                data = await _read_capped(response, target, limits.max_bytes)
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise FetchTimeout(f"timed out fetching from {target.label}") from None
        except httpx.HTTPError as error:
            raise _failure(target, error) from None
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
        return Fetched(
            data=data, content_type=content_type.lower() or None, final_url=str(target.url)
        )
    raise AssertionError("unreachable: the last hop returns or raises")  # pragma: no cover


async def _resolve(target: UrlTarget, policy: SsrfPolicy, resolver: Resolver) -> list[IPAddress]:
    if target.address is not None:
        return [target.address]  # an IP literal, checked with the URL
    try:
        addresses = list(await resolver(target.host, target.port))
    except socket.gaierror as error:
        raise FetchFailed(
            f"could not resolve {target.label}: {error.strerror}",
            retryable=error.errno not in _PERMANENT_DNS_ERRORS,
        ) from None
    except OSError as error:
        raise FetchFailed(f"could not resolve {target.label}: {error}") from None
    return policy.check_resolved(target, addresses)


async def _send(
    http: httpx.AsyncClient, target: UrlTarget, addresses: list[IPAddress]
) -> httpx.Response:
    """Send to the checked addresses in order until one accepts the connection (a host
    may list an IPv6 address this machine cannot reach)."""
    for address in addresses[:-1]:
        with contextlib.suppress(httpx.ConnectError):
            return await _send_to(http, target, address)
    return await _send_to(http, target, addresses[-1])


async def _send_to(
    http: httpx.AsyncClient, target: UrlTarget, address: IPAddress
) -> httpx.Response:
    """A request to ``address`` that the server and TLS still see as for the host name."""
    extensions = {}
    if target.url.scheme == "https" and target.address is None:
        extensions["sni_hostname"] = target.host
    headers = {**_HEADERS, "Host": target.url.netloc.decode("ascii")}
    request = http.build_request(
        "GET", target.url.copy_with(host=str(address)), headers=headers, extensions=extensions
    )
    return await http.send(request, stream=True, follow_redirects=False)


def _redirect_url(target: UrlTarget, location: str) -> str:
    try:
        return str(target.url.join(location))
    except (httpx.InvalidURL, ValueError, TypeError) as error:
        raise InvalidUrl(f"{target.label} redirected to an invalid URL: {error}") from None


def _failure(target: UrlTarget, error: httpx.HTTPError) -> MediaError:
    """A transport failure: retryable, except a certificate that does not verify or a
    redirect to a malformed URL (which httpx itself rejects while reading the response)."""
    if isinstance(error, httpx.RemoteProtocolError) and "location header" in str(error):
        return InvalidUrl(f"{target.label} redirected to an invalid URL: {error}")
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return FetchFailed(
                f"the TLS certificate of {target.label} does not verify: {cause.verify_message}",
                retryable=False,
            )
        cause = cause.__cause__ or cause.__context__
    return FetchFailed(f"could not fetch from {target.label}: {error!r}")


def _check_status(response: httpx.Response, target: UrlTarget) -> None:
    if 200 <= response.status_code < 300:
        return
    phrase = f" {response.reason_phrase}" if response.reason_phrase else ""
    raise HttpStatusError(
        f"{target.label} answered HTTP {response.status_code}{phrase}",
        status_code=response.status_code,
    )


async def _read_capped(response: httpx.Response, target: UrlTarget, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(
            f"{target.label} sent {int(declared)} bytes, more than the limit of {max_bytes}"
        )
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(f"{target.label} sent more than the limit of {max_bytes} bytes")
    return bytes(body)
