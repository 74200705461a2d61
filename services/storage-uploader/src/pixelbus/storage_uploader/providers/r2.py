"""Cloudflare R2 through its S3 API (aioboto3), one client per provider.

An upload no larger than one part (``PIXELBUS_R2_PART_SIZE``, 8 MiB by default) is one
``PutObject``; a larger one is a multipart upload fed from the stream of chunks: chunks are
gathered into an in-memory file until it holds a part (S3 refuses parts under 5 MiB except
the last), the part is sent (read from that file in small pieces by the HTTP client, so it
is not copied whole again), then dropped, so memory stays at about one part whatever the
size of the output. A failed multipart upload is aborted, so no parts linger. Every object
gets its content type and ``Cache-Control``. URLs are ``R2_PUBLIC_URL/<key>``, or presigned
GETs (``PIXELBUS_R2_URL_TTL_S``) when ``R2_PUBLIC_URL`` is unset.

The client keeps up to ``connections`` connections (the uploader passes its concurrency),
so that every upload slot can be writing at once: botocore's pool of 10 would queue the
rest, whatever ``PIXELBUS_UPLOAD_CONCURRENCY`` says.

botocore's own retries are off: the uploader retries with backoff (``retry``), then
JetStream redelivers; retrying here too would only multiply the waits. Every botocore
failure is mapped onto ``StoragePermanentError`` or ``StorageRetryableError`` with a
message naming the setting to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from pixelbus.storage_uploader.errors import (
    StorageError,
    StoragePermanentError,
    StorageRetryableError,
)
from pixelbus.storage_uploader.providers.base import (
    DEFAULT_CONTENT_TYPE,
    Stored,
    Upload,
    close_stream,
    validate_key,
)
from pixelbus.storage_uploader.settings import DEFAULT_UPLOAD_CONCURRENCY, R2Settings

__all__ = ["R2Provider", "map_r2_error"]

_KEYS = "R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY"
_ENDPOINT = "R2_ACCOUNT_ID / PIXELBUS_R2_ENDPOINT_URL"
# code -> (what happened, settings to check), for refusals that will not heal
_CREDENTIAL_CODES = {
    "AccessDenied": ("access denied", f"{_KEYS} (the token needs write access to R2_BUCKET)"),
    "InvalidAccessKeyId": ("unknown access key", "R2_ACCESS_KEY_ID"),
    "SignatureDoesNotMatch": ("signature rejected", "R2_SECRET_ACCESS_KEY"),
    "InvalidToken": ("invalid token", _KEYS),
    "ExpiredToken": ("expired token", _KEYS),
    "AuthorizationHeaderMalformed": ("authorization refused", f"{_KEYS} and R2_ACCOUNT_ID"),
    "RequestTimeTooSkewed": ("request time too skewed", "the system clock"),
}
_RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "ServiceUnavailable",
        "InternalError",
    }
)


class R2Provider:
    name = "r2"

    def __init__(
        self,
        settings: R2Settings,
        *,
        session: aioboto3.Session | None = None,
        connections: int = DEFAULT_UPLOAD_CONCURRENCY,
    ) -> None:
        self._settings = settings
        self._session = session or aioboto3.Session()
        self._config = Config(
            region_name="auto",
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
            max_pool_connections=connections,
            connect_timeout=settings.timeout_s,
            read_timeout=settings.timeout_s,
            # R2 does not support every checksum newer botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def url_for(self, key: str) -> str:
        """The public URL of ``key``, or a presigned GET when ``R2_PUBLIC_URL`` is unset."""
        if self._settings.public_url:
            return f"{self._settings.public_url}/{key}"
        client = await self._get_client()
        url: str = await client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._settings.bucket, "Key": key},
            ExpiresIn=self._settings.url_ttl_s,
        )
        return url

    async def store(self, upload: Upload) -> Stored:
        validate_key(upload.key, self.name)
        client = await self._get_client()
        attributes = {
            "Bucket": self._settings.bucket,
            "Key": upload.key,
            "ContentType": upload.content_type or DEFAULT_CONTENT_TYPE,
            "CacheControl": self._settings.cache_control,
        }
        chunks = upload.open()
        try:
            first = await _fill(chunks, self._settings.part_size)
            if first.length < self._settings.part_size:  # all of it fits in one request
                await client.put_object(Body=first.body, **attributes)
            else:
                await self._multipart(client, attributes, first, chunks)
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            raise self._error(exc, upload.key) from exc
        finally:
            await close_stream(chunks)
        return Stored(await self.url_for(upload.key), self.name)

    async def _multipart(
        self,
        client: Any,
        attributes: dict[str, str],
        part: _Part,
        chunks: AsyncIterator[bytes],
    ) -> None:
        """Send ``part`` (a full one) and the rest of ``chunks`` as a multipart upload."""
        bucket, key = attributes["Bucket"], attributes["Key"]
        created = await client.create_multipart_upload(**attributes)
        upload_id = created["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            while part.length:
                number = len(parts) + 1
                answer = await client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part.body
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
                part.body.close()  # freed before the next part is gathered
                part = await _fill(chunks, self._settings.part_size)
            await client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError, TimeoutError):
                await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    async def check(self) -> None:
        client = await self._get_client()
        try:
            await client.head_bucket(Bucket=self._settings.bucket)
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            raise self._error(exc, None) from exc

    def _error(
        self, exc: ClientError | BotoCoreError | TimeoutError, key: str | None
    ) -> StorageError:
        return map_r2_error(
            exc, bucket=self._settings.bucket, key=key, endpoint=self._settings.endpoint_url
        )

    async def aclose(self) -> None:
        async with self._lock:
            stack, self._stack, self._client = self._stack, None, None
            if stack is not None:
                await stack.aclose()

    async def _get_client(self) -> Any:
        """The provider's one S3 client, created on first use."""
        async with self._lock:
            if self._client is None:
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    self._session.client(
                        "s3",
                        endpoint_url=self._settings.endpoint_url,
                        aws_access_key_id=self._settings.access_key_id,
                        aws_secret_access_key=self._settings.secret_access_key,
                        config=self._config,
                    )
                )
                self._stack = stack
            return self._client


@dataclass(frozen=True)
class _Part:
    body: io.BytesIO  # positioned at its start
    length: int


async def _fill(chunks: AsyncIterator[bytes], size: int) -> _Part:
    """The next part: chunks gathered until it holds ``size`` bytes or the stream ends.

    A chunk that overshoots is kept whole (parts only need a minimum size), so a part is at
    most ``size`` plus one chunk.
    """
    body = io.BytesIO()
    length = 0
    while length < size:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        length += body.write(chunk)
    body.seek(0)
    return _Part(body, length)


def map_r2_error(
    exc: ClientError | BotoCoreError | TimeoutError,
    *,
    bucket: str,
    key: str | None,
    endpoint: str,
) -> StorageError:
    """Our error for a botocore failure while writing ``key`` (``None``: checking the bucket)."""
    doing = f"writing {key!r} to bucket {bucket!r}" if key else f"checking bucket {bucket!r}"
    if isinstance(exc, ClientError):
        return _map_client_error(exc, doing, checking=key is None)
    code = type(exc).__name__
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return _permanent(f"r2: no usable credentials {doing}: check {_KEYS}", code)
    if isinstance(exc, ParamValidationError):
        return _permanent(f"r2: invalid request {doing}: {exc}", code)
    # Connection refused or reset, timeouts, DNS: the network or R2 may come back.
    return StorageRetryableError(
        f"r2: cannot reach {endpoint} ({code}) {doing}: check {_ENDPOINT} if it persists",
        provider="r2",
        code=code,
    )


def _map_client_error(exc: ClientError, doing: str, *, checking: bool) -> StorageError:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(error.get("Code") or status)
    detail = f"({status} {code})" if code != str(status) else f"({status})"
    if checking and status == 404:
        code = "NoSuchBucket"  # a HEAD answer has no body, so head_bucket's 404 has no code
    if code == "NoSuchBucket":
        return _permanent(
            f"r2: bucket does not exist {detail} {doing}: check R2_BUCKET and {_ENDPOINT}", code
        )
    if code in _RETRYABLE_CODES or status in (408, 429) or status >= 500 or status == 0:
        return StorageRetryableError(
            f"r2: server failing or throttling {detail} {doing}", provider="r2", code=code
        )
    if code in _CREDENTIAL_CODES:
        what, check = _CREDENTIAL_CODES[code]
        return _permanent(f"r2: {what} {detail} {doing}: check {check}", code)
    if status in (401, 403):
        return _permanent(f"r2: access denied {detail} {doing}: check {_KEYS}", code)
    message = error.get("Message") or "no message"
    return _permanent(f"r2: request refused {detail} {doing}: {message}", code)


def _permanent(message: str, code: str) -> StoragePermanentError:
    return StoragePermanentError(message, provider="r2", code=code)
