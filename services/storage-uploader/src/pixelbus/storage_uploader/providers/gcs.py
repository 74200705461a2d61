"""Google Cloud Storage through its JSON API (gcloud-aio-storage), one session per provider.

Credentials are the usual Google ones: the service-account file named by
``GOOGLE_APPLICATION_CREDENTIALS``, or the metadata server (workload identity) when it is
unset. ``STORAGE_EMULATOR_HOST`` points the client at an emulator; with a credentials file
the requests are still authorised (so an emulator that checks tokens sees them), without
one they are not, as the client does for emulators.

An upload is spooled from the chunk stream into a temporary file (in memory up to
``_SPOOL_BYTES``, on disk beyond), which the client streams to the server: a media upload
when small, a resumable one when large. Each object gets its content type and
``Cache-Control``. URLs are ``PIXELBUS_GCS_PUBLIC_URL/<key>``, or V4-signed GETs
(``PIXELBUS_GCS_URL_TTL_S``) signed with the service account's key, or through IAM
``signBlob`` for credentials without one.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tempfile
from datetime import UTC, datetime
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from gcloud.aio.auth import IamClient, Token
from gcloud.aio.storage import Storage
from tenacity import stop_after_attempt

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
from pixelbus.storage_uploader.providers.gcs_signing import Signer, signed_url
from pixelbus.storage_uploader.settings import GcsSettings

__all__ = ["GcsProvider", "map_gcs_error"]

_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
_SPOOL_BYTES = 8 * 1024 * 1024
_CREDENTIALS = "GOOGLE_APPLICATION_CREDENTIALS"
_ENDPOINT = "STORAGE_EMULATOR_HOST (or the network)"


class _Token(Token):
    """The client's token, fetched in one try: gcloud-aio-auth retries a refused grant five
    times with waits up to a minute, which only delays the verdict on bad credentials (and
    storms the token endpoint). Transient failures are retried by the uploader instead."""

    async def acquire_access_token(self, timeout: int = 10) -> None:  # type: ignore[override]
        once = Token.acquire_access_token.retry_with(stop=stop_after_attempt(1))
        await once(self, timeout)


class _Storage(Storage):
    """The client, sending a resumable upload's bytes once: gcloud-aio-storage tries the
    ``PUT`` five times with waits of 1 to 8 s, also after refusals that will not heal.
    Retries are the uploader's (with its backoff), then JetStream's."""

    async def _do_upload(
        self,
        session_uri: str,
        stream: Any,
        headers: dict[str, str],
        *,
        retries: int = 1,
        session: Any = None,
        timeout: int = 30,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await super()._do_upload(
            session_uri, stream, headers, retries=1, session=session, timeout=timeout
        )
        return result


class GcsProvider:
    name = "gcs"

    def __init__(self, settings: GcsSettings) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._storage: _Storage | None = None
        self._token: Token | None = None

    async def store(self, upload: Upload) -> Stored:
        validate_key(upload.key, self.name)
        storage = await self._client()
        chunks = upload.open()
        try:
            with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
                async for chunk in chunks:
                    await asyncio.to_thread(spool.write, chunk)
                spool.seek(0)
                await storage.upload(
                    self._settings.bucket,
                    upload.key,
                    spool,
                    content_type=upload.content_type or DEFAULT_CONTENT_TYPE,
                    metadata={"Cache-Control": self._settings.cache_control},  # → cacheControl
                    timeout=int(self._settings.timeout_s),
                )
            url = await self.url_for(upload.key)
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            raise self._error(exc, upload.key) from exc
        finally:
            await close_stream(chunks)
        return Stored(url, self.name)

    async def check(self) -> None:
        storage = await self._client()
        try:
            await storage.get_bucket_metadata(
                self._settings.bucket, timeout=int(self._settings.timeout_s)
            )
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            raise self._error(exc, None) from exc

    async def url_for(self, key: str) -> str:
        if self._settings.public_url:
            return f"{self._settings.public_url}/{key}"
        signer, email = self._signer()
        return await signed_url(
            signer,
            base_url=self._settings.api_url,
            bucket=self._settings.bucket,
            key=key,
            email=email,
            now=datetime.now(UTC),
            expires_s=self._settings.url_ttl_s,
        )

    def _signer(self) -> tuple[Signer, str]:
        """Sign with the file's private key, or through IAM ``signBlob`` without one."""
        credentials = self._settings.credentials
        pem = credentials.get("private_key")
        if isinstance(pem, str) and credentials.get("client_email"):
            key = serialization.load_pem_private_key(pem.encode(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError("the service account key is not an RSA key")

            async def sign_locally(data: bytes) -> bytes:
                return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

            return sign_locally, str(credentials["client_email"])
        email = self._settings.signer_email or ""

        async def sign_with_iam(data: bytes) -> bytes:
            iam = IamClient(token=self._token, session=self._session)  # type: ignore[arg-type]
            answer = await iam.sign_blob(data, service_account_email=email)
            return base64.b64decode(answer["signedBlob"])

        return sign_with_iam, email

    def _error(self, exc: Exception, key: str | None) -> StorageError:
        token_uri = getattr(self._token, "token_uri", None)
        return map_gcs_error(
            exc,
            bucket=self._settings.bucket,
            key=key,
            endpoint=self._settings.api_url,
            token_uri=str(token_uri) if token_uri else None,
        )

    async def aclose(self) -> None:
        async with self._lock:
            session, self._session, self._storage, self._token = self._session, None, None, None
            if session is not None:
                await session.close()

    async def _client(self) -> _Storage:
        async with self._lock:
            if self._storage is None:
                self._session = aiohttp.ClientSession()
                service_file = None
                if self._settings.credentials:
                    service_file = io.StringIO(json.dumps(dict(self._settings.credentials)))
                self._token = _Token(
                    service_file=service_file,
                    scopes=_SCOPES,
                    session=self._session,  # type: ignore[arg-type]  # aiohttp's, typed loosely
                )
                dev = self._settings.emulator and not self._settings.credentials
                self._storage = _Storage(
                    token=self._token,
                    session=self._session,  # type: ignore[arg-type]
                    api_root=self._settings.api_url,
                    api_is_dev=dev,
                )
            return self._storage


def map_gcs_error(
    exc: Exception,
    *,
    bucket: str,
    key: str | None,
    endpoint: str,
    token_uri: str | None = None,
) -> StorageError:
    """Our error for a failure while writing ``key`` (``None``: checking the bucket)."""
    doing = f"writing {key!r} to bucket {bucket!r}" if key else f"checking bucket {bucket!r}"
    code = type(exc).__name__
    if isinstance(exc, aiohttp.ClientResponseError):
        status = exc.status
        url = str(exc.request_info.url) if exc.request_info else ""
        code = str(status)
        if token_uri and url.startswith(token_uri) and 400 <= status < 500:
            return _permanent(
                f"gcs: credentials refused by the token endpoint ({status}) {doing}: "
                f"check {_CREDENTIALS}",
                code,
            )
        if status in (408, 429) or status >= 500:
            return StorageRetryableError(
                f"gcs: server failing or throttling ({status}) {doing}", provider="gcs", code=code
            )
        if status in (401, 403):
            return _permanent(
                f"gcs: access denied ({status}) {doing}: check {_CREDENTIALS} (the account "
                f"needs storage.objects.create on PIXELBUS_GCS_BUCKET)",
                code,
            )
        if status == 404:
            return _permanent(
                f"gcs: bucket does not exist ({status}) {doing}: check PIXELBUS_GCS_BUCKET", code
            )
        return _permanent(f"gcs: request refused ({status}) {doing}: {exc.message}", code)
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return StorageRetryableError(
            f"gcs: cannot reach {endpoint} ({code}) {doing}: check {_ENDPOINT} if it persists",
            provider="gcs",
            code=code,
        )
    # KeyError / ValueError: an answer without the fields we need, or an unusable key file
    return _permanent(
        f"gcs: unusable credentials or answer ({code}: {exc}) {doing}: check {_CREDENTIALS}", code
    )


def _permanent(message: str, code: str) -> StoragePermanentError:
    return StoragePermanentError(message, provider="gcs", code=code)
