"""The remote engine: the seed's external face-swap service at ``FACE_SWAP_API_URL``.

Protocol: ``GET {url}/health`` answers 2xx when the service can work; ``POST {url}/swap``
takes JSON ``{"source_image", "target_image"}`` (base64 PNG) plus the selection options
and answers the swapped image (an ``image/*`` body, or JSON ``{"image": base64}``).

Each call waits at most ``FACE_SWAP_TIMEOUT`` seconds. Timeouts, connection failures,
429 and 5xx are tried again ``FACE_SWAP_RETRY_COUNT`` times with exponential backoff
(``backoff``, 2 x, 4 x, ...); then the task's own retry takes over (retryable). Other
4xx are permanent: the request is at fault, and the service's message is passed on.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import Any

import httpx

from pixelbus.faceswap_worker.engines.base import RGBImage, SwapOptions, require_rgb
from pixelbus.faceswap_worker.engines.errors import NoFaceFound, RemoteEngineError
from pixelbus.media.arrays import decode_image, encode_image
from pixelbus.media.errors import MediaError

__all__ = ["RemoteEngine"]

_RETRY_STATUSES = frozenset({408, 425, 429})


class RemoteEngine:
    name = "remote"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        retry_count: int,
        backoff_s: float = 1.0,
        health_ttl_s: float = 30.0,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_result_pixels: int = 40_000_000,
    ) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout_s
        self._retries = retry_count
        self._backoff = backoff_s
        self._health_ttl = health_ttl_s
        self._client = client or httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._sleep = sleep
        self._clock = clock
        self._healthy_until = float("-inf")
        self._max_pixels = max_result_pixels

    def swap(self, source: RGBImage, target: RGBImage, options: SwapOptions) -> RGBImage:
        require_rgb(source, "source")
        require_rgb(target, "target")
        self._check_health()
        body: dict[str, Any] = {
            "source_image": base64.b64encode(encode_image(source, "png")).decode(),
            "target_image": base64.b64encode(encode_image(target, "png")).decode(),
            "source_face_index": options.source_face_index,
            "target_face_index": options.target_face_index,
            "face_order": options.face_order,
        }
        response = self._with_retries(
            "swap", lambda: self._client.post(f"{self._url}/swap", json=body, timeout=self._timeout)
        )
        return self._result(response)

    def _check_health(self) -> None:
        if self._clock() < self._healthy_until:
            return
        self._with_retries(
            "health check", lambda: self._client.get(f"{self._url}/health", timeout=self._timeout)
        )
        self._healthy_until = self._clock() + self._health_ttl

    def _with_retries(self, what: str, call: Callable[[], httpx.Response]) -> httpx.Response:
        last = ""
        for attempt in range(self._retries + 1):
            if attempt:
                self._sleep(self._backoff * 2 ** (attempt - 1))
            try:
                response = call()
            except httpx.TimeoutException:
                last = f"timed out after {self._timeout:g} s"
                continue
            except httpx.TransportError as exc:
                last = f"{exc.__class__.__name__}: {exc}"
                continue
            if response.status_code >= 500 or response.status_code in _RETRY_STATUSES:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise self._refusal(what, response)
            return response
        self._healthy_until = float("-inf")
        raise RemoteEngineError(
            "remote_unavailable",
            f"face-swap service {what} failed {self._retries + 1} times, last: {last}",
            retryable=True,
        )

    @staticmethod
    def _refusal(what: str, response: httpx.Response) -> Exception:
        detail: Any = response.text[:300]
        code = "remote_refused"
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            detail = (
                payload.get("detail") or payload.get("error") or payload.get("message") or detail
            )
            if payload.get("code") == "no_face_found":
                which = payload.get("which")
                return NoFaceFound(which if which in ("source", "target") else "target")
        return RemoteEngineError(
            code,
            f"face-swap service refused the {what} (HTTP {response.status_code}): {detail}",
            retryable=False,
        )

    def _result(self, response: httpx.Response) -> RGBImage:
        content_type = response.headers.get("content-type", "")
        data = response.content
        if content_type.startswith("application/json"):
            try:
                data = base64.b64decode(response.json()["image"], validate=True)
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise RemoteEngineError(
                    "remote_bad_answer",
                    f"face-swap service answered bad JSON: {exc}",
                    retryable=True,
                ) from exc
        try:
            return decode_image(data, max_bytes=len(data) + 1, max_pixels=self._max_pixels)
        except MediaError as exc:
            raise RemoteEngineError(
                "remote_bad_answer",
                f"face-swap service answered no image: {exc}",
                retryable=True,
            ) from exc
