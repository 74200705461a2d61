"""Cloudflare Images through its v4 API (httpx), one client per provider.

An image is uploaded with ``POST /accounts/{account}/images/v1`` (multipart form: ``file``,
``id``) under a custom id equal to its storage key, so a redelivered upload meets ``409``
(code 5409, the id exists) and reads the existing image instead of adding a second one.
The URL is the image's delivery URL of the configured variant (``PIXELBUS_CF_IMAGES_VARIANT``)
taken from the answer's ``variants``.

Cloudflare Images stores images only (PNG, JPEG, GIF, WebP, SVG; 10 MiB at most): any other
output goes to the fallback provider (``PIXELBUS_CF_IMAGES_FALLBACK``) or fails permanently
with a message saying so. Answers are ``{"success", "errors": [{"code", "message"}],
"messages", "result"}``; a 401/403 (or the authentication error codes) is permanent and
names ``CLOUDFLARE_API_TOKEN``; 429, 5xx and transport failures are retryable.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from pixelbus.storage_uploader.errors import (
    StorageError,
    StoragePermanentError,
    StorageRetryableError,
)
from pixelbus.storage_uploader.providers.base import (
    StorageProvider,
    Stored,
    Upload,
    validate_key,
)
from pixelbus.storage_uploader.settings import CfImagesSettings

__all__ = ["IMAGE_TYPES", "MAX_IMAGE_BYTES", "CfImagesProvider", "map_cf_images_error"]

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml"})
MAX_IMAGE_BYTES = 10 * 1024 * 1024
_EXISTS = 5409
_AUTH_CODES = frozenset({10000, 10001, 9106, 9109, 6003, 6111})
_TOKEN = "CLOUDFLARE_API_TOKEN"  # noqa: S105 - the setting's name
_ACCOUNT = "CLOUDFLARE_ACCOUNT_ID"


class CfImagesProvider:
    name = "cf_images"

    def __init__(
        self,
        settings: CfImagesSettings,
        *,
        fallback: StorageProvider | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._fallback = fallback
        self._transport = transport
        self._base = f"{settings.api_url}/accounts/{settings.account_id}/images/v1"
        self._lock = asyncio.Lock()
        self._http: httpx.AsyncClient | None = None

    @staticmethod
    def accepts(upload: Upload) -> bool:
        """Whether Cloudflare Images can hold ``upload`` (an image of at most 10 MiB)."""
        content_type = upload.content_type.split(";")[0].strip().lower()
        return content_type in IMAGE_TYPES and upload.size <= MAX_IMAGE_BYTES

    async def store(self, upload: Upload) -> Stored:
        validate_key(upload.key, self.name)
        if not self.accepts(upload):
            if self._fallback is not None:
                return await self._fallback.store(upload)
            raise StoragePermanentError(
                f"cf_images: {upload.key!r} ({upload.content_type}, {upload.size} bytes) is not "
                "an image Cloudflare Images can store (PNG, JPEG, GIF, WebP or SVG, 10 MiB at "
                "most): set PIXELBUS_CF_IMAGES_FALLBACK to local, r2 or gcs for such outputs",
                provider=self.name,
                code="not_an_image",
            )
        data = await upload.read()  # at most 10 MiB, and the API takes a whole form
        files = {"file": (upload.key.rsplit("/", 1)[-1], data, upload.content_type)}
        form = {"id": upload.key, "requireSignedURLs": "false"}
        answer = await self._request("POST", "", f"uploading {upload.key!r}", files, form)
        if answer is None:  # the id exists: uploaded before (a redelivery)
            answer = await self._request("GET", f"/{upload.key}", f"reading {upload.key!r}")
        assert answer is not None
        return Stored(self._delivery_url(answer, upload.key), self.name)

    async def check(self) -> None:
        await self._request("GET", "/stats", "checking the account")
        if self._fallback is not None:
            await self._fallback.check()

    async def aclose(self) -> None:
        async with self._lock:
            http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        if self._fallback is not None:
            await self._fallback.aclose()

    def _delivery_url(self, answer: dict[str, Any], key: str) -> str:
        result = answer.get("result") or {}
        variants = [str(v) for v in result.get("variants") or []]
        for url in variants:
            if url.rsplit("/", 1)[-1] == self._settings.variant:
                return url
        names = ", ".join(url.rsplit("/", 1)[-1] for url in variants) or "none"
        raise StoragePermanentError(
            f"cf_images: the account has no variant {self._settings.variant!r} for {key!r} "
            f"(it has: {names}): check PIXELBUS_CF_IMAGES_VARIANT",
            provider=self.name,
            code="no_such_variant",
        )

    async def _request(
        self,
        method: str,
        path: str,
        doing: str,
        files: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """The answer's JSON; ``None`` for a 409 "exists" on an upload."""
        http = await self._client()
        try:
            response = await http.request(method, self._base + path, files=files, data=data)
        except httpx.TransportError as exc:
            raise map_cf_images_error(exc, doing=doing, endpoint=self._settings.api_url) from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        if response.is_success and body.get("success", True):
            return body
        if method == "POST" and _codes(body) & {_EXISTS}:
            return None
        raise map_cf_images_status(response.status_code, body, doing=doing)

    async def _client(self) -> httpx.AsyncClient:
        async with self._lock:
            if self._http is None:
                self._http = httpx.AsyncClient(
                    headers={"Authorization": f"Bearer {self._settings.api_token}"},
                    timeout=self._settings.timeout_s,
                    transport=self._transport,
                )
            return self._http


def _codes(body: dict[str, Any]) -> set[int]:
    codes = set()
    for error in body.get("errors") or []:
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            codes.add(error["code"])
    return codes


def map_cf_images_status(status: int, body: dict[str, Any], *, doing: str) -> StorageError:
    """Our error for an API answer that is not a success."""
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    detail = "; ".join(f"{e.get('code')} {e.get('message')}" for e in errors) or "no details"
    code = str(errors[0].get("code")) if errors else str(status)
    what = f"cf_images: {doing} answered {status} ({detail})"
    if status in (408, 429) or status >= 500:
        return StorageRetryableError(what, provider="cf_images", code=code)
    if status in (401, 403) or _codes(body) & _AUTH_CODES:
        return StoragePermanentError(
            f"{what}: check {_TOKEN} (it needs Cloudflare Images: Edit) and {_ACCOUNT}",
            provider="cf_images",
            code=code,
        )
    if status == 404:
        return StoragePermanentError(f"{what}: check {_ACCOUNT}", provider="cf_images", code=code)
    return StoragePermanentError(what, provider="cf_images", code=code)


def map_cf_images_error(exc: httpx.TransportError, *, doing: str, endpoint: str) -> StorageError:
    code = type(exc).__name__
    return StorageRetryableError(
        f"cf_images: cannot reach {endpoint} ({code}) {doing}: check "
        "PIXELBUS_CF_IMAGES_API_URL if it persists",
        provider="cf_images",
        code=code,
    )
