"""One webhook POST through the SSRF guard: the URL checked, the host resolved once,
every address checked, and the request sent to a checked address itself (with the
original ``Host`` and TLS server name), so DNS rebinding cannot redirect it. Redirects
are not followed: a receiver answers 2xx or the delivery is retried."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from pixelbus.media.errors import MediaError
from pixelbus.media.fetch import Resolver, system_resolver
from pixelbus.media.ssrf import IPAddress, SsrfPolicy, UrlTarget

__all__ = ["SendResult", "WebhookSender"]

_MAX_ERROR = 300


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    retryable: bool
    status_code: int | None
    error: str | None
    duration_ms: float


class WebhookSender:
    def __init__(
        self,
        policy: SsrfPolicy,
        *,
        timeout_s: float,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._http = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(timeout_s))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> SendResult:
        started = time.monotonic()

        def result(ok: bool, retryable: bool, status: int | None, error: str | None) -> SendResult:
            took = round((time.monotonic() - started) * 1000, 1)
            return SendResult(ok, retryable, status, error and error[:_MAX_ERROR], took)

        try:
            target = self.policy.check_url(url)
            addresses = await self._addresses(target)
        except MediaError as exc:  # refused by the guard: no retry will change that
            return result(False, False, None, str(exc))
        except OSError as exc:  # only the resolver raises it
            return result(False, True, None, f"could not resolve {target.host!r}: {exc}")
        last_error = "no address"
        for address in addresses:
            try:
                response = await self._http.send(
                    _pinned(self._http, target, address, body, headers), stream=True
                )
            except httpx.ConnectError as exc:
                last_error = f"could not connect to {target.label}: {exc!r}"
                continue
            except httpx.HTTPError as exc:
                return result(False, True, None, f"{target.label}: {exc!r}")
            await response.aclose()
            if 200 <= response.status_code < 300:
                return result(True, False, response.status_code, None)
            return result(False, True, response.status_code, f"answered {response.status_code}")
        return result(False, True, None, last_error)

    async def _addresses(self, target: UrlTarget) -> list[IPAddress]:
        if target.address is not None:
            return [target.address]
        found = list(await self._resolver(target.host, target.port))
        return self.policy.check_resolved(target, found)


def _pinned(
    http: httpx.AsyncClient,
    target: UrlTarget,
    address: IPAddress,
    body: bytes,
    headers: dict[str, str],
) -> httpx.Request:
    extensions = {}
    if target.url.scheme == "https" and target.address is None:
        extensions["sni_hostname"] = target.host
    return http.build_request(
        "POST",
        target.url.copy_with(host=str(address)),
        content=body,
        headers={**headers, "Host": target.url.netloc.decode("ascii")},
        extensions=extensions,
    )
