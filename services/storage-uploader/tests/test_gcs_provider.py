"""The GCS provider against GCS-compatible HTTP servers, reached through the client's
emulator setting ``STORAGE_EMULATOR_HOST``: the test kit's ``GcsServer`` (checking OAuth
tokens issued by its own token endpoint to service-account keys) and, where it supports
the calls, the third-party ``gcp-storage-emulator`` (no credentials: it checks none).

The tests parametrised over ``gcs`` run on both. The emulator cannot run the others:
signed URLs (it checks no signature), refused or read-only credentials (it checks no
token), injected 5xx/429 answers and the request log (it has neither ``fail_next`` nor a
record of requests), and the token-free emulator mode, which every emulator run already is.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pixelbus.storage_uploader.errors import StoragePermanentError, StorageRetryableError
from pixelbus.storage_uploader.providers import GcsProvider, Upload, build_provider, store_bytes
from pixelbus.storage_uploader.settings import DEFAULT_CACHE_CONTROL, GcsSettings, StorageSettings
from pixelbus.testkit.gcs_emulator import GcsEmulator
from pixelbus.testkit.gcs_server import GcsServer

pytestmark = pytest.mark.servers  # every test talks to a GCS server

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100


@dataclass(frozen=True)
class Stored:
    data: bytes
    content_type: str | None
    cache_control: str | None


@dataclass
class Gcs:
    """One GCS-compatible server, read back the same way whichever it is."""

    server: GcsServer | GcsEmulator
    credentials: Path | None

    @property
    def url(self) -> str:
        return self.server.url

    def create_bucket(self) -> str:
        return self.server.create_bucket()

    def keys(self, bucket: str) -> list[str]:
        if isinstance(self.server, GcsEmulator):
            return self.server.keys(bucket)
        return sorted(key for b, key in self.server.objects if b == bucket)

    def stored(self, bucket: str, key: str) -> Stored | None:
        if isinstance(self.server, GcsEmulator):
            found = self.server.stored(bucket, key)
        else:
            found = self.server.objects.get((bucket, key))
        if found is None:
            return None
        return Stored(found.data, found.content_type, found.cache_control)


@pytest.fixture(params=["testkit", "gcp-storage-emulator"])
def gcs(request: pytest.FixtureRequest, tmp_path: Path) -> Gcs:
    if request.param == "testkit":
        server: GcsServer = request.getfixturevalue("gcs_server")
        return Gcs(server, server.service_account(tmp_path))
    return Gcs(request.getfixturevalue("gcs_emulator"), None)


def gcs_env(
    server: GcsServer | Gcs, bucket: str, credentials: Path | None, *, public: bool = True
) -> dict[str, str]:
    env = {
        "STORAGE_PROVIDER": "gcs",
        "PIXELBUS_GCS_BUCKET": bucket,
        "STORAGE_EMULATOR_HOST": server.url,
    }
    if credentials is not None:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(credentials)
    if public:
        env["PIXELBUS_GCS_PUBLIC_URL"] = f"{server.url}/{bucket}/"
    return env


def gcs_settings(*args: object, **kwargs: object) -> GcsSettings:
    settings = StorageSettings.from_env(gcs_env(*args, **kwargs)).gcs  # type: ignore[arg-type]
    assert settings is not None
    return settings


@pytest.fixture
def gcs_bucket(gcs: Gcs) -> str:
    return gcs.create_bucket()


@pytest.fixture
async def gcs_provider(gcs: Gcs, gcs_bucket: str) -> AsyncIterator[GcsProvider]:
    provider = GcsProvider(gcs_settings(gcs, gcs_bucket, gcs.credentials))
    yield provider
    await provider.aclose()


@pytest.fixture
def bucket(gcs_server: GcsServer) -> str:
    return gcs_server.create_bucket()


@pytest.fixture
def account(gcs_server: GcsServer, tmp_path: Path) -> Path:
    return gcs_server.service_account(tmp_path)


@pytest.fixture
async def provider(gcs_server: GcsServer, bucket: str, account: Path) -> AsyncIterator[GcsProvider]:
    provider = GcsProvider(gcs_settings(gcs_server, bucket, account))
    yield provider
    await provider.aclose()


def api_requests(server: GcsServer) -> list[tuple[str, str]]:
    return [r for r in server.requests if r[1].startswith(("/storage", "/upload"))]


async def test_store_writes_bytes_type_and_cache_control_and_the_public_url_serves_them(
    gcs_provider: GcsProvider, gcs: Gcs, gcs_bucket: str
) -> None:
    key = "tasks/2026/11/28/task_1/out.png"
    url = await store_bytes(gcs_provider, key, PNG, "image/png")
    assert url == f"{gcs.url}/{gcs_bucket}/{key}"
    assert gcs.stored(gcs_bucket, key) == Stored(PNG, "image/png", DEFAULT_CACHE_CONTROL)
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.content == PNG


async def test_the_public_url_answers_with_the_cache_control_stored(
    provider: GcsProvider, gcs_server: GcsServer, bucket: str
) -> None:
    # ours only: the emulator's downloads carry no Cache-Control header
    url = await store_bytes(provider, "tasks/t/out.png", PNG, "image/png")
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.headers["cache-control"] == DEFAULT_CACHE_CONTROL


async def test_the_same_key_twice_is_one_object_with_the_last_bytes(
    gcs_provider: GcsProvider, gcs: Gcs, gcs_bucket: str
) -> None:
    first = await store_bytes(gcs_provider, "tasks/t/a.png", b"first", "image/png")
    second = await store_bytes(gcs_provider, "tasks/t/a.png", b"second", "image/png")
    assert first == second
    assert gcs.keys(gcs_bucket) == ["tasks/t/a.png"]
    stored = gcs.stored(gcs_bucket, "tasks/t/a.png")
    assert stored is not None and stored.data == b"second"


CHUNK = bytes(range(256)) * 512  # 128 KiB, like Object Store chunks


def large_upload() -> Upload:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(48):  # 6 MiB: over the client's 5 MiB simple-upload limit
            yield CHUNK

    return Upload(
        key="tasks/t/video.mp4", content_type="video/mp4", size=48 * len(CHUNK), open=chunks
    )


async def test_a_large_output_is_stored_whole(
    gcs_provider: GcsProvider, gcs: Gcs, gcs_bucket: str
) -> None:
    stored = await gcs_provider.store(large_upload())
    assert stored.provider == "gcs"
    obj = gcs.stored(gcs_bucket, "tasks/t/video.mp4")
    assert obj is not None and (obj.data, obj.content_type) == (CHUNK * 48, "video/mp4")


async def test_a_large_output_is_streamed_through_a_resumable_upload(
    provider: GcsProvider, gcs_server: GcsServer, bucket: str
) -> None:
    # ours only: the request log shows the resumable session
    await provider.store(large_upload())
    assert ("POST", f"/upload/storage/v1/b/{bucket}/o") in gcs_server.requests
    assert ("PUT", f"/upload/storage/v1/b/{bucket}/o") in gcs_server.requests  # the session
    assert gcs_server.objects[(bucket, "tasks/t/video.mp4")].data == CHUNK * 48


async def test_a_failed_resumable_upload_is_sent_once_and_retryable(
    provider: GcsProvider, gcs_server: GcsServer, bucket: str
) -> None:
    gcs_server.fail_next(1, 503, method="PUT")
    upload = Upload(
        key="tasks/t/video.mp4",
        content_type="video/mp4",
        size=6 * 1024 * 1024,
        open=lambda: single(b"v" * (6 * 1024 * 1024)),
    )
    with pytest.raises(StorageRetryableError) as caught:
        await provider.store(upload)
    assert caught.value.code == "503"
    puts = [r for r in gcs_server.requests if r[0] == "PUT"]
    assert len(puts) == 1  # the client's own five tries are off: ours decide
    await provider.store(upload)
    assert len(gcs_server.objects[(bucket, "tasks/t/video.mp4")].data) == 6 * 1024 * 1024


async def single(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_without_a_public_url_the_url_is_signed_and_only_the_signed_one_works(
    gcs_server: GcsServer, account: Path
) -> None:
    private = gcs_server.create_bucket(public=False)
    provider = GcsProvider(gcs_settings(gcs_server, private, account, public=False))
    try:
        url = await store_bytes(provider, "tasks/t/a.png", PNG, "image/png")
    finally:
        await provider.aclose()
    assert "X-Goog-Signature=" in url and "X-Goog-Expires=604800" in url
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).content == PNG
        unsigned = await http.get(url.split("?")[0])
        tampered = await http.get(url.replace("X-Goog-Expires=604800", "X-Goog-Expires=999999"))
    assert unsigned.status_code == 403
    assert tampered.status_code == 403 and b"SignatureDoesNotMatch" in tampered.content


async def test_check_passes_when_the_bucket_is_there(gcs_provider: GcsProvider) -> None:
    await gcs_provider.check()  # raises StorageError otherwise


async def test_refused_credentials_are_permanent_name_the_setting_and_reach_no_bucket(
    gcs_server: GcsServer, bucket: str, tmp_path: Path
) -> None:
    unknown = gcs_server.service_account(tmp_path, registered=False)
    provider = GcsProvider(gcs_settings(gcs_server, bucket, unknown))
    try:
        with pytest.raises(StoragePermanentError) as caught:
            await store_bytes(provider, "tasks/t/a.png", PNG, "image/png")
        with pytest.raises(StoragePermanentError, match="GOOGLE_APPLICATION_CREDENTIALS"):
            await provider.check()
    finally:
        await provider.aclose()
    error = caught.value
    assert (error.provider, error.code, error.retryable) == ("gcs", "400", False)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(error)
    assert "token endpoint" in str(error)
    assert api_requests(gcs_server) == []
    assert gcs_server.grants == 2  # one try each for the upload and the check: no storm
    assert gcs_server.objects == {}


async def test_an_account_that_may_only_read_is_refused_permanently(
    gcs_server: GcsServer, bucket: str, tmp_path: Path
) -> None:
    reader = gcs_server.service_account(tmp_path, can_write=False)
    provider = GcsProvider(gcs_settings(gcs_server, bucket, reader))
    try:
        with pytest.raises(StoragePermanentError) as caught:
            await store_bytes(provider, "tasks/t/a.png", PNG, "image/png")
    finally:
        await provider.aclose()
    assert caught.value.code == "403"
    assert "access denied" in str(caught.value) and "PIXELBUS_GCS_BUCKET" in str(caught.value)


async def test_a_missing_bucket_is_permanent_and_named(gcs: Gcs) -> None:
    provider = GcsProvider(gcs_settings(gcs, "no-such-bucket", gcs.credentials))
    try:
        with pytest.raises(StoragePermanentError) as caught:
            await store_bytes(provider, "tasks/t/a.png", PNG, "image/png")
        with pytest.raises(StoragePermanentError, match="PIXELBUS_GCS_BUCKET"):
            await provider.check()
    finally:
        await provider.aclose()
    assert caught.value.code == "404"
    assert "'no-such-bucket'" in str(caught.value)


@pytest.mark.parametrize("status", [503, 500, 429])
async def test_server_errors_are_retryable_and_the_next_attempt_lands(
    provider: GcsProvider, gcs_server: GcsServer, bucket: str, status: int
) -> None:
    gcs_server.fail_next(1, status)
    with pytest.raises(StorageRetryableError) as caught:
        await store_bytes(provider, "tasks/t/a.png", PNG, "image/png")
    assert caught.value.code == str(status)
    assert gcs_server.objects == {}
    await store_bytes(provider, "tasks/t/a.png", PNG, "image/png")
    assert gcs_server.objects[(bucket, "tasks/t/a.png")].data == PNG


async def test_an_endpoint_nobody_listens_on_is_retryable(bucket: str, account: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = StorageSettings.from_env(
        {
            "STORAGE_PROVIDER": "gcs",
            "PIXELBUS_GCS_BUCKET": bucket,
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
            "PIXELBUS_GCS_PUBLIC_URL": "https://cdn.example.com",
        }
    )
    provider = build_provider(settings)
    try:
        with pytest.raises(StorageRetryableError) as caught:
            await store_bytes(provider, "tasks/t/a.png", PNG, "image/png")
    finally:
        await provider.aclose()
    assert "STORAGE_EMULATOR_HOST" in str(caught.value)


async def test_an_emulator_without_credentials_gets_no_token(tmp_path: Path) -> None:
    with GcsServer(require_auth=False) as server:
        bucket = server.create_bucket()
        provider = build_provider(StorageSettings.from_env(gcs_env(server, bucket, None)))
        try:
            url = await store_bytes(provider, "tasks/t/a.png", PNG, "image/png")
        finally:
            await provider.aclose()
        assert server.objects[(bucket, "tasks/t/a.png")].data == PNG
    assert url.endswith(f"/{bucket}/tasks/t/a.png")
